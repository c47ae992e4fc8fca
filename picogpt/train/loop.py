"""`picogpt-train`'s loop: fp32 CPU training of the context-vector GPT, resumable to the exact step.

A training sequence is `--seq-windows` windows, so gradients flow through the whole chain of carried
context vectors. Ctrl-C or SIGTERM saves a checkpoint and exits with 130 / 143; `--resume` continues so
that an interrupted run reaches the same losses as an uninterrupted one. Under `torchrun` every rank
runs this loop: DistributedDataParallel (gloo) averages the gradients, each rank reads its own shard of
the data, and only rank 0 writes.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from picogpt.checkpoint import load_checkpoint, save_checkpoint
from picogpt.config import GPTConfig
from picogpt.data import DataConfig, data_file_record, open_data
from picogpt.data.text import TokenData
from picogpt.errors import PicoError
from picogpt.model import GPT
from picogpt.system import check_memory, physical_cores
from picogpt.tokenizer import CharTokenizer
from picogpt.train import recipe
from picogpt.train.distributed import Dist, init_distributed, peer_lost
from picogpt.train.malloc import keep_heap_memory
from picogpt.train.matmul import choose, use_kernel
from picogpt.train.optim import make_optimizer
from picogpt.train.outdir import append_log, prepare_out_dir, repair_log
from picogpt.train.recipe import HorizonFitter, TrainConfig, check_recipe, cooldown_cost, lr_at, resumed_config
from picogpt.train.runner import StepRunner, Stopper, activation_bytes_per_token, check_finite, evaluate


@dataclass
class RunOptions:
    """How to run (not what to learn): where, how many threads, for how long, and what may be replaced.

    `explicit` names the TrainConfig / DataConfig fields set on the command line, which --resume checks
    against the checkpoint's; `max_iters_set` says whether --max-iters was one of them.
    """

    out: Path
    threads: int | None = None
    max_minutes: float | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    matmul: str = "auto"
    max_iters_set: bool = True
    explicit: frozenset[str] = frozenset()


def train(tc: TrainConfig, config: GPTConfig | None, data: DataConfig, opts: RunOptions) -> dict[str, Any]:
    """Run (or resume) training; returns the final log record (with "signal" when a signal stopped it).

    `config` None (resume only) takes the checkpoint's model.
    """
    check_recipe(tc, opts.threads, opts.max_minutes)
    if config is None and not opts.resume:
        raise PicoError("a model config is needed to start a run")
    dist = init_distributed()
    try:
        record = TrainingRun(tc, config, data, opts, dist).run()
    except RuntimeError as exc:
        if not dist.enabled:
            raise
        # gloo raises when a peer's socket closes: one line for the user; checkpoints are written atomically
        raise peer_lost(dist, exc, opts.out) from None
    dist.close()  # only on success: tearing down with a dead peer can block
    return record


class TrainingRun:
    """The state of one run: model, optimizer, data, step, schedule horizon, and what to log and save."""

    def __init__(self, tc: TrainConfig, config: GPTConfig | None, data: DataConfig, opts: RunOptions,
                 dist: Dist) -> None:
        self.opts, self.dist = opts, dist
        self.ckpt_path, self.log_path = opts.out / "ckpt.pt", opts.out / "log.jsonl"
        # One process per core under torchrun (the processes are the data parallelism); otherwise
        # threads go to data-parallel workers (one core each) when the batch can be split; see StepRunner.
        self.threads = opts.threads or max(1, physical_cores() // dist.local_world)
        workers = 1 if dist.enabled else (self.threads if tc.batch_size >= self.threads else 1)
        keep_heap_memory()
        torch.set_num_threads(1 if workers > 1 else self.threads)
        self.lock = prepare_out_dir(opts.out, opts.resume, opts.overwrite) if dist.is_main else None
        state, new_end = None, None
        if opts.resume:
            # Rank 0 reads the checkpoint and hands it to the others: other machines need no copy of it.
            state = dist.share(load_checkpoint(self.ckpt_path) if dist.is_main else None)
            resumed = resumed_config(state, tc, config, data, self.ckpt_path, opts.max_iters_set, opts.explicit,
                                     warn=self.warn)
            tc, config, data, new_end = resumed.tc, resumed.config, resumed.data, resumed.new_end
        self.tc, self.config, self.data_config = tc, config, data
        self.tokenizer = CharTokenizer()
        self.seq_len = tc.seq_windows * config.context_len
        self.tokens_per_step = tc.batch_size * self.seq_len * dist.world
        self.data = self._open_data()
        self.model, self.runner, self.optimizer = self._build_model(workers)
        self.rng = np.random.default_rng(tc.seed)
        per_token = activation_bytes_per_token(config) // max(1, dist.local_world)
        self.tc = tc = recipe.settle_cooldown(tc, resumed.cooldown_windows if state is not None else None,
                                              lambda t: recipe.check_cooldown(t, config, self.data, per_token),
                                              self.warn)
        self.data_file = data_file_record(data, state, self.warn)
        self.step, self.horizon, self.elapsed_before, self.logged_already = 0, tc.max_iters, 0.0, False
        self.stopper: Stopper | None = None  # installed by run(): signals are caught only while it trains
        self.t0 = self.window_start = time.perf_counter()
        self.window_tokens, self.recent, self.record = 0, [], {}
        if state is not None:
            self._restore(state, new_end)
        elif dist.is_main:
            self.log_path.unlink(missing_ok=True)
        if dist.enabled:
            # Each rank's batches are seeded by (seed, rank, step): a resume at any world size is reproducible.
            self.rng = np.random.default_rng([tc.seed, dist.rank, self.step])

    def warn(self, message: str) -> None:
        if self.dist.is_main:
            click.echo(message, err=True)

    def _open_data(self) -> Any:
        tc, dist = self.tc, self.dist
        per_token = activation_bytes_per_token(self.config) // max(1, dist.local_world)
        # one sequence that does not fit is --seq-windows' fault; a batch of them, --batch-size's
        check_memory(self.seq_len * per_token, f"a sequence of {self.seq_len:,} characters", "--seq-windows")
        check_memory(tc.batch_size * self.seq_len * per_token, f"a batch of {tc.batch_size} x {self.seq_len} "
                     "characters", "--batch-size")
        return open_data(self.data_config, self.tokenizer, self.seq_len, tc.seed, warn=self.warn,
                         shard=(dist.rank, dist.world))

    def _build_model(self, workers: int) -> tuple[GPT, StepRunner, Any]:
        tc = self.tc
        torch.manual_seed(tc.seed)
        model = GPT(self.config)
        rows = max(1, self.tc.batch_size // workers) * self.seq_len  # one worker's share of a step
        matmul = choose(self.opts.matmul, self.config, rows)
        use_kernel(model, matmul.linear)
        self.matmul = matmul.why
        # DDP broadcasts rank 0's parameters at construction and averages gradients in backward().
        net = torch.nn.parallel.DistributedDataParallel(model) if self.dist.enabled else model
        runner = StepRunner(net, workers)
        optimizer = make_optimizer(model, tc.optimizer, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2),
                                   executor=runner.pool, workers=workers, products=matmul.products)
        return model, runner, optimizer

    def _restore(self, state: dict[str, Any], new_end: int | None) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.rng.bit_generator.state = state["rng"]["numpy"]
            torch.set_rng_state(state["rng"]["torch"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise PicoError(f"{self.ckpt_path}: its model, optimizer or rng state cannot be restored "
                            f"({type(exc).__name__}): the file is damaged") from None
        self.step, self.horizon, self.elapsed_before = state["step"], state["horizon"], state["elapsed"]
        if new_end is not None:
            self.horizon = max(self.step, new_end)
        logged = int(repair_log(self.log_path, self.step)) if self.dist.is_main else 0
        self.logged_already = bool(self.dist.from_main(logged))

    def elapsed(self) -> float:
        """Seconds of training, the time before a resume included."""
        return self.elapsed_before + time.perf_counter() - self.t0

    def save(self, val_loss: float | None) -> None:
        if not self.dist.is_main:
            return
        self.stopper.saving = True  # a signal now waits for the save to finish
        save_checkpoint(self.ckpt_path, {
            "config": self.config.to_dict(), "tokenizer": self.tokenizer.to_json(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "train_config": asdict(self.tc),
            "data_config": self.data_config.to_dict(), "step": self.step, "horizon": self.horizon,
            "elapsed": self.elapsed(), "val_loss": val_loss, "world_size": self.dist.world, "data_file": self.data_file,
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
        })
        self.stopper.saving = False

    def evaluate_and_log(self, write: Any) -> None:
        """Score the val batches, log the record (log.jsonl, loss.png, one line) and start a new timing window."""
        val = evaluate(self.model, self.data, self.tc, self.runner, self.dist)
        check_finite(val, "val loss", self.step, self.ckpt_path)
        tok_s = self.window_tokens / max(1e-9, time.perf_counter() - self.window_start)
        record = {"step": self.step, "train_loss": float(np.mean(self.recent)) if self.recent else None,
                  "val_loss": val, "tokens_per_s": round(tok_s, 1), "lr": lr_at(self.step, self.tc, self.horizon),
                  "elapsed_s": round(self.elapsed(), 2)}
        if self.dist.enabled:
            record.update(world_size=self.dist.world, ranks_in_sync=self.dist.in_sync(self.model))
        if self.dist.is_main:
            append_log(self.opts.out, record)
            train_text = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
            write(f"step {self.step}: train {train_text} val {val:.4f} | {tok_s:,.0f} tok/s")
        self.record = record
        self.window_start, self.window_tokens, self.recent = time.perf_counter(), 0, []

    def train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (training loss, seconds)."""
        self.optimizer.set_lr(lr_at(self.step, self.tc, self.horizon))
        x, y = self.batch()
        t0 = time.perf_counter()
        loss = self.runner(torch.from_numpy(x), torch.from_numpy(y))
        check_finite(loss, "training loss", self.step, self.ckpt_path, diverged=3 * math.log(self.config.vocab_size))
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        self.recent.append(loss)
        self.window_tokens += self.tokens_per_step
        return loss, time.perf_counter() - t0

    def time_step(self, rows: int, length: int) -> float:
        """Seconds of one forward + backward on random tokens [rows, length] (best of 2), with the gradients
        dropped and torch's RNG restored, so the run's trajectory is untouched (for `cooldown_cost`)."""
        rng_state, gen = torch.get_rng_state(), torch.Generator().manual_seed(0)
        x = torch.randint(0, self.config.vocab_size, (rows, length), generator=gen)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            self.runner(x, x)
            times.append(time.perf_counter() - t)
        self.optimizer.zero_grad()
        torch.set_rng_state(rng_state)
        return min(times)

    def reshapes_cooldown(self) -> bool:
        """Whether the cooldown's batches may hold longer sequences (text data; Wikipedia streams one length)."""
        return isinstance(self.data, TokenData)

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """This step's training batch: longer sequences of fewer rows in a --cooldown-windows cooldown (text data;
        Wikipedia streams sequences of one length)."""
        rows, windows = recipe.step_shape(self.tc, self.step, self.horizon)
        if windows == self.tc.seq_windows or not self.reshapes_cooldown():
            return self.data.batch("train", self.tc.batch_size, self.rng)
        return self.data.batch("train", rows, self.rng, seq_len=windows * self.config.context_len)

    def announce(self) -> None:
        if not self.dist.is_main:
            return
        tc, dist = self.tc, self.dist
        ranks = f"{dist.world} processes x " if dist.enabled else ""
        print(f"model: {tc.model} {self.config.num_params() / 1e6:.2f}M parameters | {tc.optimizer} {tc.schedule} "
              f"lr {tc.lr:g} | {ranks}{self.threads} threads | {dist.world * tc.batch_size} x {self.seq_len} = "
              f"{self.tokens_per_step:,} tokens per step | matmul: {self.matmul} | out: {self.opts.out}", flush=True)

    def run(self) -> dict[str, Any]:
        """Train until the horizon, the time budget or a signal; evaluate, log and save every eval_interval."""
        from tqdm import tqdm

        tc, opts, dist = self.tc, self.opts, self.dist
        self.announce()
        self.stopper, start_step = Stopper(), self.step
        self.model.train()
        self.t0 = self.window_start = time.perf_counter()  # the clock starts with the first step
        budget = opts.max_minutes * 60 if opts.max_minutes else None
        cost = 1.0
        if budget is not None and self.reshapes_cooldown():
            cost = cooldown_cost(tc, self.horizon, self.config.context_len, self.time_step)
        fitter = HorizonFitter(tc, budget or 0.0, tc.max_iters if opts.max_iters_set else None, cost)
        bar = tqdm(total=self.horizon, initial=self.step, disable=not opts.progress or not dist.is_main,
                   dynamic_ncols=True, desc="train")
        try:
            while True:
                out_of_time = budget is not None and self.step > start_step and self.elapsed() > budget  # >= 1 step
                interrupted, out_of_time = dist.any(self.stopper.requested, out_of_time)
                done = self.step >= self.horizon or out_of_time or interrupted
                resumed_here = self.logged_already and self.step == start_step  # logged and saved already
                if (self.step % tc.eval_interval == 0 or done) and not resumed_here:
                    if not interrupted:  # Ctrl-C: save at once, skip the eval
                        self.evaluate_and_log(bar.write)
                    self.save(self.record.get("val_loss"))
                if done:
                    break
                loss, seconds = self.train_step()
                if budget is not None:
                    self.horizon = bar.total = fitter.refit(self.step, self.horizon, self.elapsed(), dist)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{self.tokens_per_step / seconds:,.0f}")
        finally:
            bar.close()
            self.runner.close()
            self.stopper.restore()
            if self.lock is not None:
                self.lock.release()
        if not interrupted:
            return self.record
        if dist.is_main:
            name = signal.Signals(self.stopper.signum).name if self.stopper.signum else "another rank"
            print(f"interrupted ({name}): checkpoint saved at step {self.step} in {self.ckpt_path}; continue with "
                  "--resume", flush=True)
        return {**self.record, "signal": self.stopper.signum or signal.SIGINT}
