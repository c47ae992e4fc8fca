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
import sys
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
from picogpt.optim import OPTIMIZERS, lr_factor, make_optimizer
from picogpt.plot import write_loss_plot
from picogpt.presets import DEFAULT_PRESET, PRESETS, preset_of, resolve_preset
from picogpt.system import check_memory, check_threads, physical_cores
from picogpt.tokenizer import CharTokenizer


@dataclass
class TrainConfig:
    """Everything that decides the trajectory of a run (stored in the checkpoint)."""

    dataset: str = "tinyshakespeare"
    model: str = DEFAULT_PRESET
    optimizer: str = "muon"
    # Sequences of 2 windows, batch from the preset: with Muon, 2 minutes of pico reached 1.560 on the full
    # val split at 8 x 2 windows, 1.586 at 4 x 2 and 1.633 at 2 x 4 (README). Two windows per sequence keep
    # the carried context vector trained: with one, the model would never see a non-zero slot.
    batch_size: int = PRESETS[DEFAULT_PRESET].batch_size
    seq_windows: int = 2
    lr: float = PRESETS[DEFAULT_PRESET].lr
    schedule: str = "wsd"
    cooldown_frac: float = 0.3
    min_lr_ratio: float = 0.1  # cosine only: wsd cools down to zero
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
    """The learning rate at `step` of a run of `horizon` steps (see picogpt.optim.lr_factor)."""
    return tc.lr * lr_factor(step, tc.schedule, tc.warmup_iters, horizon, tc.min_lr_ratio, tc.cooldown_frac)


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Check OUT is writable, refuse to start over an earlier run by accident, remove temp files a kill left."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PicoError(f"--out {out} is not writable ({exc.strerror or exc})") from None
    for stale in [*out.glob(".ckpt-*.tmp"), out / "loss.tmp.png", out / ".log.jsonl.tmp"]:
        stale.unlink(missing_ok=True)
    if (out / "ckpt.pt").exists() and not resume and not overwrite:
        raise PicoError(f"{out} already holds a checkpoint: continue it with --resume, or start over with "
                        "--overwrite (or choose another --out)")


def repair_log(log_path: Path, step: int) -> bool:
    """Keep the log's whole records up to the checkpoint's step: drop a torn last line (a kill or a full
    disk leaves one) and records a killed run wrote after its last checkpoint, so steps stay monotonic.
    Returns whether the checkpoint's own step is logged already (then the resumed run does not log it again)."""
    if not log_path.exists():
        return False
    kept = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(json.dumps(record))
    tmp = log_path.with_name(".log.jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, log_path)
    return bool(kept) and json.loads(kept[-1])["step"] == step


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
    """Ctrl-C or SIGTERM (what timeout, docker and systemd send) sets a flag; the loop finishes its step,
    saves, and exits with 128 + the signal's number. A second signal during the save waits for the save;
    outside of it, it aborts at once (the last checkpoint on disk is intact: writes are atomic)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.saving = False
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and not self.saving:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


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


# Checkpoints written before presets and Muon trained with AdamW and a cosine schedule.
LEGACY_TRAIN = {"optimizer": "adamw", "schedule": "cosine", "cooldown_frac": 0.0}


def resumed_config(state: dict, tc: TrainConfig, config: GPTConfig | None, ckpt_path: Path, max_iters_set: bool,
                   explicit: frozenset[str], warn) -> tuple[TrainConfig, GPTConfig, int | None]:
    """The stored run's TrainConfig and model config; refuse a different model or optimizer, warn of ignored flags.

    Returns (config to continue with, model config, new schedule end or None).
    """
    if "optimizer" not in state or "train_config" not in state:
        raise PicoError(f"{ckpt_path} has no optimizer state to resume from")
    stored_config = GPTConfig.from_dict(state["config"])
    stored = {**LEGACY_TRAIN, "model": preset_of(stored_config), **state["train_config"]}
    for key in ("model", "optimizer"):
        if key in explicit and getattr(tc, key) != stored[key]:
            raise PicoError(f"{ckpt_path} was trained with --{key} {stored[key]}, not {getattr(tc, key)}: "
                            f"resume without --{key}, or train a new run in another --out")
    if config is not None and config != stored_config:
        raise PicoError(f"{ckpt_path} was trained with another model config: {state['config']}")
    for key in sorted(explicit - {"max_iters", "model", "optimizer"}):
        if key in stored and getattr(tc, key) != stored[key]:
            warn(f"warning: --{key.replace('_', '-')} {getattr(tc, key)} is ignored on --resume; "
                 f"the checkpoint's {stored[key]} is kept")
    # A --max-iters that differs from the stored one sets a new end for the schedule (extend or cut
    # short); otherwise the stored schedule, time-fitted or not, continues exactly.
    new_end = tc.max_iters if max_iters_set and tc.max_iters != stored["max_iters"] else None
    fields = {k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(**{**fields, "max_iters": tc.max_iters if max_iters_set else stored["max_iters"]}), \
        stored_config, new_end


class HorizonFitter:
    """With a time budget, fit the schedule's last step to the minutes, so the cooldown ends when time does.

    A first fit after 3 steps of this process, then a refit at every eval until the cooldown starts,
    from the wall time per step since then (evals included). The horizon is stored in the checkpoint.
    """

    def __init__(self, tc: TrainConfig, budget_s: float, cap: int | None) -> None:
        self.tc, self.budget_s, self.cap = tc, budget_s, cap
        self.seen, self.mark = 0, (0, 0.0)

    def refit(self, step: int, horizon: int, elapsed: float, dist: Dist) -> int:
        self.seen += 1
        if self.seen == 1:
            self.mark = (step, elapsed)  # after the first step: warm-up and the step-0 eval are behind us
        stable = step < horizon * (1.0 - self.tc.cooldown_frac)
        if not (self.seen == 4 or (self.seen > 4 and stable and step % self.tc.eval_interval == 0)):
            return horizon
        per_step = (elapsed - self.mark[1]) / (step - self.mark[0])
        if self.seen == 4:  # no eval measured yet: add its share (an eval batch costs ~1/3 of a step)
            per_step *= 1.0 + self.tc.eval_iters / 3 / self.tc.eval_interval
        fitted = step + int((self.budget_s - elapsed) / per_step * 0.98)
        fitted = max(step + 1, min(self.cap, fitted) if self.cap else fitted)
        return dist.from_main(fitted)  # every rank must stop at the same step


def train(
    tc: TrainConfig,
    out: Path,
    config: GPTConfig | None,
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
    explicit: frozenset[str] = frozenset(),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run (or resume) training; returns the final log record.

    `config` None (resume only) takes the checkpoint's model; `explicit` names the TrainConfig
    fields the user set, which --resume checks against the checkpoint's.

    Under `torchrun` every rank runs this: DistributedDataParallel (gloo) averages the
    gradients, each rank reads its own shard of the data, and only rank 0 writes.
    """
    if tc.batch_size < 1:
        raise PicoError(f"--batch-size must be >= 1, got {tc.batch_size}")
    if tc.seq_windows < 1:
        raise PicoError(f"--seq-windows must be >= 1, got {tc.seq_windows}")
    check_threads(threads)
    if tc.seed < 0:
        raise PicoError(f"--seed must be >= 0, got {tc.seed}")
    if tc.max_iters < 1 or tc.eval_interval < 1 or tc.eval_iters < 1:
        raise PicoError("--max-iters, --eval-interval and --eval-iters must be >= 1")
    if max_minutes is not None and max_minutes <= 0:
        raise PicoError(f"--max-minutes must be > 0, got {max_minutes}")
    if not (tc.lr > 0 and math.isfinite(tc.lr)):
        raise PicoError(f"--lr must be a positive number, got {tc.lr}")
    if tc.optimizer not in OPTIMIZERS:
        raise PicoError(f"unknown --optimizer {tc.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if not 0.0 <= tc.cooldown_frac <= 1.0:
        raise PicoError(f"--cooldown-frac must be in [0, 1], got {tc.cooldown_frac}")
    if config is None and not resume:
        raise PicoError("a model config is needed to start a run")
    dist = init_distributed()
    try:
        record = _train(tc, out, config, data_path, data_files, wiki_name, wiki_config, val_percent, threads,
                        max_minutes, resume, progress, max_iters_set, explicit, overwrite, dist)
    except RuntimeError as exc:
        if not dist.enabled:
            raise
        # gloo raises when a peer's socket closes: one line for the user; checkpoints are written atomically
        raise peer_lost(dist, exc, out) from None
    dist.close()  # only on success: tearing down with a dead peer can block
    return record


def _train(tc: TrainConfig, out: Path, config: GPTConfig | None, data_path: str | None, data_files: str | None,
           wiki_name: str, wiki_config: str, val_percent: float, threads: int | None, max_minutes: float | None,
           resume: bool, progress: bool, max_iters_set: bool, explicit: frozenset[str], overwrite: bool,
           dist: Dist) -> dict[str, Any]:
    from tqdm import tqdm

    # One process per core under torchrun (the processes are the data parallelism); otherwise
    # threads go to data-parallel workers (one core each) when the batch can be split; see StepRunner.
    threads = threads or max(1, physical_cores() // dist.local_world)
    workers = 1 if dist.enabled else (threads if tc.batch_size >= threads else 1)
    keep_heap_memory()
    torch.set_num_threads(1 if workers > 1 else threads)
    if dist.is_main:
        prepare_out_dir(out, resume, overwrite)
    ckpt_path, log_path = out / "ckpt.pt", out / "log.jsonl"

    state = None
    if resume:
        # Rank 0 reads the checkpoint and hands it to the others: other machines need no copy of it.
        state = dist.share(load_checkpoint(ckpt_path) if dist.is_main else None)
        tc, config, new_end = resumed_config(state, tc, config, ckpt_path, max_iters_set, explicit,
                                             warn=lambda m: click.echo(m, err=True) if dist.is_main else None)
    tokenizer = CharTokenizer()
    seq_len = tc.seq_windows * config.context_len
    check_memory(tc.batch_size * seq_len * activation_bytes_per_token(config) // max(1, dist.local_world),
                 f"a batch of {tc.batch_size} x {seq_len} characters", "--batch-size")
    data = open_data(tc.dataset, tokenizer, seq_len, tc.seed, data_path, data_files, wiki_name, wiki_config,
                     val_percent, warn=lambda m: click.echo(m, err=True) if dist.is_main else None,
                     shard=(dist.rank, dist.world))

    torch.manual_seed(tc.seed)
    model = GPT(config)
    # DDP broadcasts rank 0's parameters at construction and averages gradients in backward().
    net = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    runner = StepRunner(net, workers)
    optimizer = make_optimizer(model, tc.optimizer, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2),
                               executor=runner.pool, workers=workers)
    rng = np.random.default_rng(tc.seed)
    step, horizon, elapsed_before, logged_already = 0, tc.max_iters, 0.0, False
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
        step, horizon, elapsed_before = state["step"], state["horizon"], state["elapsed"]
        if new_end is not None:
            horizon = max(step, new_end)
        logged_already = bool(dist.from_main(int(repair_log(log_path, step)) if dist.is_main else 0))
    elif dist.is_main:
        log_path.unlink(missing_ok=True)
    if dist.enabled:
        # Each rank draws its own batches; seeded by (seed, rank, step) so a resume at any world size
        # is reproducible. (A single process restores its exact generator state instead.)
        rng = np.random.default_rng([tc.seed, dist.rank, step])

    def checkpoint(val_loss: float | None) -> None:
        if not dist.is_main:
            return
        stopper.saving = True  # a signal now waits for the save to finish
        save_checkpoint(ckpt_path, {
            "config": config.to_dict(), "tokenizer": tokenizer.to_json(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "train_config": asdict(tc), "step": step, "horizon": horizon,
            "elapsed": elapsed_before + time.perf_counter() - t0, "val_loss": val_loss,
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}, "world_size": dist.world,
        })
        stopper.saving = False

    tokens_per_iter = tc.batch_size * seq_len * dist.world
    if dist.is_main:
        ranks = f"{dist.world} processes x " if dist.enabled else ""
        print(f"model: {tc.model} {model.num_params() / 1e6:.2f}M parameters | {tc.optimizer} {tc.schedule} "
              f"lr {tc.lr:g} | {ranks}{threads} threads | "
              f"{dist.world * tc.batch_size} x {seq_len} = {tokens_per_iter:,} tokens per step | out: {out}",
              flush=True)
    stopper = Stopper()
    start_step = step
    model.train()
    t0 = time.perf_counter()
    window_start, window_tokens, recent = time.perf_counter(), 0, []
    record: dict[str, Any] = {}
    timed_iters: list[float] = []
    fitter = HorizonFitter(tc, max_minutes * 60 if max_minutes else 0.0, tc.max_iters if max_iters_set else None)
    bar = tqdm(total=horizon, initial=step, disable=not progress or not dist.is_main, dynamic_ncols=True,
               desc="train")
    try:
        while True:
            out_of_time = max_minutes is not None and elapsed_before + time.perf_counter() - t0 > max_minutes * 60
            interrupted, out_of_time = dist.any(stopper.requested, out_of_time)
            done = step >= horizon or out_of_time or interrupted
            resumed_here = logged_already and step == start_step  # its eval is in the log and the checkpoint
            if (step % tc.eval_interval == 0 or done) and not resumed_here:
                if not interrupted:  # Ctrl-C: save at once, skip the eval
                    val = evaluate(model, data, tc, runner, dist)
                    check_finite(val, "val loss", step, ckpt_path)
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
                        train_text = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
                        bar.write(f"step {step}: train {train_text} val {val:.4f} | {tok_s:,.0f} tok/s")
                    window_start, window_tokens, recent = time.perf_counter(), 0, []
                checkpoint(record.get("val_loss"))
            if done:
                break

            optimizer.set_lr(lr_at(step, tc, horizon))
            x, y = data.batch("train", tc.batch_size, rng)
            it0 = time.perf_counter()
            loss = runner(torch.from_numpy(x), torch.from_numpy(y))
            check_finite(loss, "training loss", step, ckpt_path, diverged=3 * math.log(config.vocab_size))
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            recent.append(loss)
            window_tokens += tokens_per_iter
            timed_iters.append(time.perf_counter() - it0)
            if max_minutes is not None:
                horizon = fitter.refit(step, horizon, elapsed_before + time.perf_counter() - t0, dist)
                bar.total = horizon
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_iter / timed_iters[-1]:,.0f}")
    finally:
        bar.close()
        runner.close()
        stopper.restore()
    if interrupted:
        if dist.is_main:
            name = signal.Signals(stopper.signum).name if stopper.signum else "another rank"
            print(f"interrupted ({name}): checkpoint saved at step {step} in {ckpt_path}; continue with --resume",
                  flush=True)
        record = {**record, "signal": stopper.signum or signal.SIGINT}
    return record


def activation_bytes_per_token(config: GPTConfig) -> int:
    """What the backward pass keeps per training token (fp32), roughly: measured 1.43 GB peak RSS for the
    base model at 4 x 1,280 tokens, about 230 KB a token with the attention maps."""
    return 4 * config.n_layer * (16 * config.n_embd + 3 * config.n_head * config.n_positions)


def check_finite(loss: float, what: str, step: int, ckpt_path: Path, diverged: float = math.inf) -> None:
    """Stop with one line when the loss is NaN/inf or has blown up; the last good checkpoint stays as it is."""
    if not math.isfinite(loss) or loss > diverged:
        kept = f"the last good checkpoint in {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint was written"
        raise PicoError(f"the {what} is {loss:.4g} at step {step}: training diverged (try a lower --lr); {kept}")


RESUME_HELP = """Continue from OUT/ckpt.pt exactly where it stopped. The checkpoint's model, optimizer and
recipe (batch size, windows, lr, schedule, seed, ...) are kept: a different --model or --optimizer is refused,
other recipe flags that differ are ignored with a warning; a new --max-iters sets a new end for the schedule."""


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
@click.option("--model", default=None,
              help=f"Model preset: {', '.join(PRESETS)}, or auto (the preset measured best for --max-minutes). "
                   f"Default: auto with --max-minutes, else {DEFAULT_PRESET} (the seed's 6.34M model).")
@click.option("--optimizer", default=TrainConfig.optimizer, show_default=True,
              help="muon (fp32 Muon for the hidden matrices, AdamW for the rest) or adamw.")
@click.option("--max-iters", type=int, default=None,
              help=f"Optimizer steps (default {TrainConfig.max_iters}; on --resume, the stored value).")
@click.option("--max-minutes", type=float, default=None,
              help="Stop after this wall time; the LR schedule is fitted so its cooldown ends then.")
@click.option("--batch-size", type=int, default=None, help="Sequences per step (default: the preset's).")
@click.option("--seq-windows", type=int, default=TrainConfig.seq_windows, show_default=True,
              help="Windows per training sequence (gradients flow through all their context vectors).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the preset's).")
@click.option("--schedule", type=click.Choice(["wsd", "cosine"]), default=TrainConfig.schedule, show_default=True,
              help="wsd: warmup, stable, linear cooldown to zero; cosine: nanoGPT's decay to lr/10.")
@click.option("--cooldown-frac", type=float, default=TrainConfig.cooldown_frac, show_default=True,
              help="wsd: the share of the steps spent cooling down.")
@click.option("--warmup-iters", type=int, default=TrainConfig.warmup_iters, show_default=True)
@click.option("--eval-interval", type=int, default=TrainConfig.eval_interval, show_default=True)
@click.option("--eval-iters", type=int, default=TrainConfig.eval_iters, show_default=True)
@click.option("--threads", type=int, default=None,
              help="torch.set_num_threads; default: the physical cores (more threads than cores only adds contention).")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--resume", is_flag=True, help=RESUME_HELP)
@click.option("--overwrite", is_flag=True, help="Start a new run in an OUT that already holds one (replacing it).")
@click.option("--context-len", type=int, default=None, help="Override the preset's shape (as --n-layer etc.).")
@click.option("--n-layer", type=int, default=None)
@click.option("--n-head", type=int, default=None)
@click.option("--n-embd", type=int, default=None)
@click.option("--dropout", type=float, default=GPTConfig.dropout, show_default=True,
              help="Training-only regulariser (export and inference run without it).")
@click.option("--report/--no-report", default=True, show_default=True,
              help="At the end, print val loss per window index with the carried vs zeroed context vector.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cli_errors
def main(dataset: str, data_path: str | None, data_files: str | None, wiki_name: str, wiki_config: str,
         val_percent: float, out: Path, model: str | None, optimizer: str, max_iters: int | None,
         max_minutes: float | None, batch_size: int | None, seq_windows: int, lr: float | None, schedule: str,
         cooldown_frac: float, warmup_iters: int, eval_interval: int, eval_iters: int, threads: int | None, seed: int,
         resume: bool, overwrite: bool, context_len: int | None, n_layer: int | None, n_head: int | None,
         n_embd: int | None, dropout: float, report: bool, quiet: bool) -> None:
    """Train PicoGPT on tinyshakespeare, a local text file, or streamed Wikipedia (fp32, CPU)."""
    ctx = click.get_current_context()
    given = {name for name in ctx.params if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    preset = resolve_preset(model or ("auto" if max_minutes else DEFAULT_PRESET), max_minutes)
    shape = {"context_len": context_len, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "dropout": dropout}
    config = PRESETS[preset].config(**shape)
    if resume and not given & {"model", *shape}:
        config = None  # the checkpoint's model
    tc = TrainConfig(dataset=dataset, model=preset_of(config) if config else preset, optimizer=optimizer,
                     batch_size=PRESETS[preset].batch_size if batch_size is None else batch_size,
                     seq_windows=seq_windows, lr=PRESETS[preset].lr if lr is None else lr,
                     schedule=schedule, cooldown_frac=cooldown_frac, warmup_iters=warmup_iters,
                     max_iters=TrainConfig.max_iters if max_iters is None else max_iters, eval_interval=eval_interval,
                     eval_iters=eval_iters, seed=seed)
    record = train(tc, out, config, data_path, data_files, wiki_name, wiki_config, val_percent, threads,
                   max_minutes, resume, progress=not quiet, max_iters_set=max_iters is not None,
                   explicit=frozenset(given & set(TrainConfig.__dataclass_fields__)), overwrite=overwrite)
    if record.get("signal"):
        sys.exit(128 + record["signal"])  # 130 for Ctrl-C, 143 for SIGTERM: `train && export` stops here
    if report and os.environ.get("RANK", "0") == "0":
        from picogpt.evaluate import report_from_checkpoint

        report_from_checkpoint(out / "ckpt.pt", data_path, data_files, wiki_name, wiki_config, val_percent,
                               batches=max(1, eval_iters // 2))


if __name__ == "__main__":
    main()
