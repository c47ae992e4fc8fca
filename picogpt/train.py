"""`picogpt-train`: fp32 CPU training of the context-vector GPT, resumable to the exact step.

nanoGPT's recipe (AdamW with decay groups, warmup + cosine, grad clipping), with a
training sequence of `--seq-windows` windows so gradients flow through the whole chain of
carried context vectors. Ctrl-C saves a checkpoint and exits cleanly; `--resume` continues
so that an interrupted run reaches the same losses as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from picogpt.checkpoint import load_checkpoint, save_checkpoint
from picogpt.config import GPTConfig
from picogpt.data import WIKI_DEFAULT_CONFIG, WIKI_DEFAULT_NAME, open_data
from picogpt.distributed import Dist, init_distributed, peer_lost
from picogpt.errors import PicoError, cli_errors
from picogpt.malloc import keep_heap_memory
from picogpt.model import GPT
from picogpt.plot import write_loss_plot
from picogpt.system import physical_cores
from picogpt.tokenizer import CharTokenizer


@dataclass
class TrainConfig:
    """Everything that decides the trajectory of a run (stored in the checkpoint)."""

    dataset: str = "tinyshakespeare"
    # Small batches, a high rate: on a 2-core CPU the early loss falls with the number of steps
    # (batch 4 reached 2.07 val in 10 min where batch 12 was still at 2.40).
    batch_size: int = 4
    seq_windows: int = 10
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_iters: int = 20
    max_iters: int = 5000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_iters: int = 8
    seed: int = 1337


def lr_at(step: int, tc: TrainConfig, horizon: int) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at `horizon`."""
    if step < tc.warmup_iters:
        return tc.lr * (step + 1) / tc.warmup_iters
    progress = min(1.0, (step - tc.warmup_iters) / max(1, horizon - tc.warmup_iters))
    min_lr = tc.lr * tc.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (tc.lr - min_lr)


def make_optimizer(model: GPT, tc: TrainConfig) -> torch.optim.AdamW:
    """nanoGPT's groups: matrices and embeddings decay, biases and LayerNorm gains do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused CPU kernel updates all 6.3M parameters in one pass (measured faster than foreach here).
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=True)


def check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PicoError(f"--out {out} is not writable ({exc.strerror or exc})") from None


class StepRunner:
    """Forward + backward of one batch, split across `workers` threads of one core each.

    On a 2-core CPU, two threads each running the model on half the batch with a single
    intra-op thread measured ~1.2x the tokens/s of one pass with 2 intra-op threads (the small
    ops of a 129-position window do not split well across cores). Each worker returns its own
    gradients and they are summed in a fixed order, so the result is deterministic.
    """

    def __init__(self, model: GPT, workers: int) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def _part(self, x: torch.Tensor, y: torch.Tensor, weight: float) -> tuple[float, tuple[torch.Tensor, ...]]:
        _, loss = self.model(x, y)
        grads = torch.autograd.grad(loss * weight, self.params)
        return loss.item(), grads

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Leave the batch's mean-loss gradients in `.grad`; return the mean loss."""
        if self.pool is None or x.size(0) < 2:
            _, loss = self.model(x, y)
            loss.backward()
            return loss.item()
        parts = min(self.workers, x.size(0))
        chunks = [(xc, yc, xc.size(0) / x.size(0)) for xc, yc in zip(x.chunk(parts), y.chunk(parts))]
        results = list(self.pool.map(lambda c: self._part(*c), chunks))
        for i, p in enumerate(self.params):
            g = results[0][1][i].clone()
            for _, grads in results[1:]:
                g += grads[i]
            p.grad = g
        return sum(loss * w for (loss, _), (_, _, w) in zip(results, chunks))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class Stopper:
    """Ctrl-C sets a flag; the loop finishes its step, saves, and exits (a second Ctrl-C aborts)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


def evaluate(model: GPT, data, tc: TrainConfig, runner: StepRunner, dist: Dist | None = None) -> float:
    """Mean val loss over fixed batches (the same rng seed every time, so evals are comparable).

    Under torchrun each rank scores its share of the same batches and the sums are combined.
    """
    dist = dist or Dist()
    rng = np.random.default_rng(tc.seed + 1_000_003)
    batches = [data.batch("val", tc.batch_size, rng) for _ in range(tc.eval_iters)][dist.rank :: dist.world]

    def loss_of(batch: tuple[np.ndarray, np.ndarray]) -> float:
        with torch.inference_mode():
            return model(torch.from_numpy(batch[0]), torch.from_numpy(batch[1]))[1].item()

    model.eval()
    losses = list(runner.pool.map(loss_of, batches)) if runner.pool else [loss_of(b) for b in batches]
    model.train()
    total, count = dist.sum([float(np.sum(losses)), float(len(losses))])
    return total / count


def train(
    tc: TrainConfig,
    out: Path,
    config: GPTConfig,
    data_path: str | None = None,
    data_files: str | None = None,
    wiki_name: str = WIKI_DEFAULT_NAME,
    wiki_config: str = WIKI_DEFAULT_CONFIG,
    val_percent: float = 1.0,
    threads: int | None = None,
    max_minutes: float | None = None,
    resume: bool = False,
    progress: bool = True,
    max_iters_set: bool = True,
) -> dict[str, Any]:
    """Run (or resume) training; returns the final log record.

    Under `torchrun` every rank runs this: DistributedDataParallel (gloo) averages the
    gradients, each rank reads its own shard of the data, and only rank 0 writes.
    """
    if tc.batch_size < 1:
        raise PicoError(f"--batch-size must be >= 1, got {tc.batch_size}")
    if tc.seq_windows < 1:
        raise PicoError(f"--seq-windows must be >= 1, got {tc.seq_windows}")
    if threads is not None and threads < 1:
        raise PicoError(f"--threads must be >= 1, got {threads}")
    if tc.max_iters < 1 or tc.eval_interval < 1 or tc.eval_iters < 1:
        raise PicoError("--max-iters, --eval-interval and --eval-iters must be >= 1")
    if max_minutes is not None and max_minutes <= 0:
        raise PicoError(f"--max-minutes must be > 0, got {max_minutes}")
    dist = init_distributed()
    try:
        record = _train(tc, out, config, data_path, data_files, wiki_name, wiki_config, val_percent, threads,
                        max_minutes, resume, progress, max_iters_set, dist)
    except RuntimeError as exc:
        if not dist.enabled:
            raise
        # gloo raises when a peer's socket closes: one line for the user; checkpoints are written atomically
        raise peer_lost(dist, exc, out) from None
    dist.close()  # only on success: tearing down with a dead peer can block
    return record


def _train(tc: TrainConfig, out: Path, config: GPTConfig, data_path: str | None, data_files: str | None,
           wiki_name: str, wiki_config: str, val_percent: float, threads: int | None, max_minutes: float | None,
           resume: bool, progress: bool, max_iters_set: bool, dist: Dist) -> dict[str, Any]:
    from tqdm import tqdm

    # One process per core under torchrun (the processes are the data parallelism); otherwise
    # threads go to data-parallel workers (one core each) when the batch can be split; see StepRunner.
    threads = threads or max(1, physical_cores() // dist.local_world)
    workers = 1 if dist.enabled else (threads if tc.batch_size >= threads else 1)
    keep_heap_memory()
    torch.set_num_threads(1 if workers > 1 else threads)
    if dist.is_main:
        check_out_dir(out)
    ckpt_path, log_path = out / "ckpt.pt", out / "log.jsonl"

    state = None
    if resume:
        # Rank 0 reads the checkpoint and hands it to the others: other machines need no copy of it.
        state = dist.share(load_checkpoint(ckpt_path) if dist.is_main else None)
        if GPTConfig.from_dict(state["config"]) != config:
            raise PicoError(f"{ckpt_path} was trained with another model config: {state['config']}")
        if "optimizer" not in state or "train_config" not in state:
            raise PicoError(f"{ckpt_path} has no optimizer state to resume from")
        stored = state["train_config"]["max_iters"]
        # A --max-iters that differs from the stored one sets a new end for the schedule (extend or cut
        # short); otherwise the stored schedule, time-fitted or not, continues exactly.
        new_end = tc.max_iters if max_iters_set and tc.max_iters != stored else None
        tc = TrainConfig(**{**state["train_config"], "max_iters": tc.max_iters if max_iters_set else stored})
    tokenizer = CharTokenizer()
    seq_len = tc.seq_windows * config.context_len
    data = open_data(tc.dataset, tokenizer, seq_len, tc.seed, data_path, data_files, wiki_name, wiki_config,
                     val_percent, warn=lambda m: click.echo(m, err=True) if dist.is_main else None,
                     shard=(dist.rank, dist.world))

    torch.manual_seed(tc.seed)
    model = GPT(config)
    optimizer = make_optimizer(model, tc)
    rng = np.random.default_rng(tc.seed)
    step, horizon, elapsed_before = 0, tc.max_iters, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        step, horizon, elapsed_before = state["step"], state["horizon"], state["elapsed"]
        if new_end is not None:
            horizon = max(step, new_end)
    elif dist.is_main:
        log_path.unlink(missing_ok=True)
    if dist.enabled:
        # Each rank draws its own batches; seeded by (seed, rank, step) so a resume at any world size
        # is reproducible. (A single process restores its exact generator state instead.)
        rng = np.random.default_rng([tc.seed, dist.rank, step])

    def checkpoint(val_loss: float | None) -> None:
        if not dist.is_main:
            return
        save_checkpoint(ckpt_path, {
            "config": config.to_dict(), "tokenizer": tokenizer.to_json(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "train_config": asdict(tc), "step": step, "horizon": horizon,
            "elapsed": elapsed_before + time.perf_counter() - t0, "val_loss": val_loss,
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}, "world_size": dist.world,
        })

    tokens_per_iter = tc.batch_size * seq_len * dist.world
    # DDP broadcasts rank 0's parameters at construction and averages gradients in backward().
    net = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    runner = StepRunner(net, workers)
    if dist.is_main:
        ranks = f"{dist.world} processes x " if dist.enabled else ""
        print(f"model: {model.num_params() / 1e6:.2f}M parameters | {ranks}{threads} threads | "
              f"{dist.world * tc.batch_size} x {seq_len} = {tokens_per_iter:,} tokens per step | out: {out}",
              flush=True)
    stopper = Stopper()
    model.train()
    t0 = time.perf_counter()
    window_start, window_tokens, recent = time.perf_counter(), 0, []
    record: dict[str, Any] = {}
    timed_iters: list[float] = []
    bar = tqdm(total=horizon, initial=step, disable=not progress or not dist.is_main, dynamic_ncols=True,
               desc="train")
    try:
        while True:
            out_of_time = max_minutes is not None and elapsed_before + time.perf_counter() - t0 > max_minutes * 60
            interrupted, out_of_time = dist.any(stopper.requested, out_of_time)
            done = step >= horizon or out_of_time or interrupted
            if step % tc.eval_interval == 0 or done:
                if not interrupted:  # Ctrl-C: save at once, skip the eval
                    val = evaluate(model, data, tc, runner, dist)
                    tok_s = window_tokens / max(1e-9, time.perf_counter() - window_start)
                    record = {"step": step, "train_loss": float(np.mean(recent)) if recent else None, "val_loss": val,
                              "tokens_per_s": round(tok_s, 1), "lr": lr_at(step, tc, horizon),
                              "elapsed_s": round(elapsed_before + time.perf_counter() - t0, 2)}
                    if dist.enabled:
                        record.update(world_size=dist.world, ranks_in_sync=dist.in_sync(model))
                    if dist.is_main:
                        with log_path.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                        write_loss_plot(log_path, out / "loss.png")
                        bar.write(f"step {step}: train {record['train_loss'] or float('nan'):.4f} val {val:.4f} "
                                  f"| {tok_s:,.0f} tok/s")
                    window_start, window_tokens, recent = time.perf_counter(), 0, []
                checkpoint(record.get("val_loss"))
            if done:
                break

            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, tc, horizon)
            x, y = data.batch("train", tc.batch_size, rng)
            it0 = time.perf_counter()
            loss = runner(torch.from_numpy(x), torch.from_numpy(y))
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            recent.append(loss)
            window_tokens += tokens_per_iter
            timed_iters.append(time.perf_counter() - it0)
            # With a time budget, fit the cosine schedule to it once the step time is known.
            # The horizon is stored in the checkpoint, so a resumed run keeps the same schedule.
            if max_minutes is not None and state is None and len(timed_iters) == 3:
                per_iter = float(np.median(timed_iters))
                per_eval = per_iter * tc.eval_iters / 3 / tc.eval_interval
                horizon = max(step + 1, min(tc.max_iters, int(max_minutes * 60 / (per_iter + per_eval) * 0.97)))
                horizon = dist.from_main(horizon)  # every rank must stop at the same step
                bar.total = horizon
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_iter / timed_iters[-1]:,.0f}")
    finally:
        bar.close()
        runner.close()
        stopper.restore()
    if interrupted and dist.is_main:
        print(f"interrupted: checkpoint saved at step {step} in {ckpt_path}; continue with --resume", flush=True)
    return record


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Choice(["tinyshakespeare", "wikipedia", "text"]), default="tinyshakespeare",
              show_default=True)
@click.option("--data", "data_path", type=str, default=None,
              help="Local UTF-8 text file (or a .bin from picogpt-prepare). Default: tinyshakespeare, "
                   "found in $PICOGPT_DATA or the cache, else downloaded.")
@click.option("--data-files", type=str, default=None,
              help="Glob of local parquet/JSONL files with Wikipedia's schema (id, url, title, text).")
@click.option("--wiki-name", default=WIKI_DEFAULT_NAME, show_default=True)
@click.option("--wiki-config", default=WIKI_DEFAULT_CONFIG, show_default=True)
@click.option("--val-percent", type=float, default=1.0, show_default=True,
              help="Wikipedia: percent of articles held out for validation (by a hash of the id).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True)
@click.option("--max-iters", type=int, default=None,
              help=f"Optimizer steps (default {TrainConfig.max_iters}; on --resume, the stored value).")
@click.option("--max-minutes", type=float, default=None, help="Stop after this wall time; the LR schedule fits it.")
@click.option("--batch-size", type=int, default=TrainConfig.batch_size, show_default=True)
@click.option("--seq-windows", type=int, default=TrainConfig.seq_windows, show_default=True,
              help="Windows per training sequence (gradients flow through all their context vectors).")
@click.option("--lr", type=float, default=TrainConfig.lr, show_default=True)
@click.option("--warmup-iters", type=int, default=TrainConfig.warmup_iters, show_default=True)
@click.option("--eval-interval", type=int, default=TrainConfig.eval_interval, show_default=True)
@click.option("--eval-iters", type=int, default=TrainConfig.eval_iters, show_default=True)
@click.option("--threads", type=int, default=None,
              help="torch.set_num_threads; default: the physical cores (more threads than cores only adds contention).")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/ckpt.pt exactly where it stopped.")
@click.option("--context-len", type=int, default=GPTConfig.context_len, show_default=True)
@click.option("--n-layer", type=int, default=GPTConfig.n_layer, show_default=True)
@click.option("--n-head", type=int, default=GPTConfig.n_head, show_default=True)
@click.option("--n-embd", type=int, default=GPTConfig.n_embd, show_default=True)
@click.option("--dropout", type=float, default=GPTConfig.dropout, show_default=True,
              help="Training-only regulariser (export and inference run without it).")
@click.option("--report/--no-report", default=True, show_default=True,
              help="At the end, print val loss per window index with the carried vs zeroed context vector.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cli_errors
def main(dataset: str, data_path: str | None, data_files: str | None, wiki_name: str, wiki_config: str,
         val_percent: float, out: Path, max_iters: int | None, max_minutes: float | None, batch_size: int,
         seq_windows: int, lr: float, warmup_iters: int, eval_interval: int, eval_iters: int, threads: int | None,
         seed: int, resume: bool, context_len: int, n_layer: int, n_head: int, n_embd: int, dropout: float,
         report: bool, quiet: bool) -> None:
    """Train PicoGPT on tinyshakespeare, a local text file, or streamed Wikipedia (fp32, CPU)."""
    config = GPTConfig(context_len=context_len, n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
    tc = TrainConfig(dataset=dataset, batch_size=batch_size, seq_windows=seq_windows, lr=lr, warmup_iters=warmup_iters,
                     max_iters=TrainConfig.max_iters if max_iters is None else max_iters, eval_interval=eval_interval,
                     eval_iters=eval_iters, seed=seed)
    train(tc, out, config, data_path, data_files, wiki_name, wiki_config, val_percent, threads, max_minutes,
          resume, progress=not quiet, max_iters_set=max_iters is not None)
    if report and os.environ.get("RANK", "0") == "0":
        from picogpt.evaluate import report_from_checkpoint

        report_from_checkpoint(out / "ckpt.pt", data_path, data_files, wiki_name, wiki_config, val_percent,
                               batches=max(1, eval_iters // 2))


if __name__ == "__main__":
    main()
