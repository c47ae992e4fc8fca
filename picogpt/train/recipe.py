"""What decides a run's trajectory: the `TrainConfig`, its learning-rate schedule fitted to a time budget,
the checks on its flags, and the rule for `--resume` (the checkpoint's recipe and data are kept)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from picogpt.config import GPTConfig
from picogpt.data import DataConfig
from picogpt.errors import PicoError
from picogpt.system import check_memory, check_threads
from picogpt.tokenizer import CharTokenizer
from picogpt.train.distributed import Dist
from picogpt.train.optim import OPTIMIZERS, lr_factor
from picogpt.train.presets import DEFAULT_PRESET, PRESETS, preset_of


@dataclass
class TrainConfig:
    """Everything that decides the trajectory of a run (stored in the checkpoint)."""

    model: str = DEFAULT_PRESET
    optimizer: str = "muon"
    # Batch and windows from the preset (2 windows; pico 3): Muon gains from more distinct sequences per step
    # (docs/design.md, "The recipe"). Two or more windows per sequence keep the carried context vector trained:
    # with one, the model would never see a non-zero slot.
    batch_size: int = PRESETS[DEFAULT_PRESET].batch_size
    seq_windows: int = PRESETS[DEFAULT_PRESET].seq_windows
    # During the cooldown, sequences of 4 windows at about the same tokens per step (fewer sequences): the last steps
    # see longer chains of carried vectors, as generation does, which lowers the val loss and the windows where the
    # carried vector does worse than zeros (docs/design.md, "The recipe"). 0 keeps seq_windows throughout.
    cooldown_windows: int = 4
    lr: float = PRESETS[DEFAULT_PRESET].lr
    # Warmup, a long stable phase, then a linear cooldown over the last 30% (wsd): it beat cosine per minute.
    schedule: str = "wsd"
    cooldown_frac: float = 0.3
    min_lr_ratio: float = 0.1  # cosine only: wsd cools down to zero
    warmup_iters: int = 20
    max_iters: int = 5000  # with --max-minutes, the horizon is fitted to the time instead (HorizonFitter)
    # nanoGPT's AdamW settings; Muon shares the weight decay (its update is scaled to AdamW's RMS).
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_iters: int = 8  # val batches per eval: the same ones every time, so evals compare
    seed: int = 1337


def lr_at(step: int, tc: TrainConfig, horizon: int) -> float:
    """The learning rate at `step` of a run of `horizon` steps (see picogpt.train.optim.lr_factor)."""
    return tc.lr * lr_factor(step, tc.schedule, tc.warmup_iters, horizon, tc.min_lr_ratio, tc.cooldown_frac)


def step_shape(tc: TrainConfig, step: int, horizon: int) -> tuple[int, int]:
    """(sequences, windows per sequence) of the batch at `step`: the cooldown may trade sequences for windows."""
    cooling = tc.schedule == "wsd" and step >= horizon * (1.0 - tc.cooldown_frac)
    if not cooling or tc.cooldown_windows <= tc.seq_windows:
        return tc.batch_size, tc.seq_windows
    return max(1, tc.batch_size * tc.seq_windows // tc.cooldown_windows), tc.cooldown_windows


def check_recipe(tc: TrainConfig, threads: int | None, max_minutes: float | None) -> None:
    """One line for each flag out of range, before anything is loaded or written."""
    if tc.batch_size < 1:
        raise PicoError(f"--batch-size must be >= 1, got {tc.batch_size}")
    if tc.seq_windows < 1:
        raise PicoError(f"--seq-windows must be >= 1, got {tc.seq_windows}")
    if tc.cooldown_windows < 0:
        raise PicoError(f"--cooldown-windows must be >= 0, got {tc.cooldown_windows}")
    check_threads(threads)
    if tc.seed < 0:
        raise PicoError(f"--seed must be >= 0, got {tc.seed}")
    if tc.max_iters < 1 or tc.eval_interval < 1 or tc.eval_iters < 1:
        raise PicoError("--max-iters, --eval-interval and --eval-iters must be >= 1")
    if max_minutes is not None and max_minutes <= 0:
        raise PicoError(f"--max-minutes must be > 0, got {max_minutes}")
    if not (0 < tc.lr <= MAX_LR and math.isfinite(tc.lr)):
        raise PicoError(f"--lr must be a positive number up to {MAX_LR:g} (the optimizers step in float32), "
                        f"got {tc.lr}")
    if tc.warmup_iters < 0:
        raise PicoError(f"--warmup-iters must be >= 0, got {tc.warmup_iters}")
    if tc.optimizer not in OPTIMIZERS:
        raise PicoError(f"unknown --optimizer {tc.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if not 0.0 <= tc.cooldown_frac <= 1.0:
        raise PicoError(f"--cooldown-frac must be in [0, 1], got {tc.cooldown_frac}")


MAX_LR = 1e30
SHAPE_FLAGS = {"context_len": ("--context-len", 2), "n_layer": ("--n-layer", 1), "n_head": ("--n-head", 1),
               "n_embd": ("--n-embd", 1)}


def check_shape(shape: dict[str, Any]) -> None:
    """The model-shape flags, each named: a window needs 2 characters at least (one cannot be exported: the
    runtime's windows would hold the slot alone), the others 1; dropout in [0, 1)."""
    for key, (flag, least) in SHAPE_FLAGS.items():
        if shape.get(key) is not None and shape[key] < least:
            raise PicoError(f"{flag} must be >= {least}, got {shape[key]}")
    if not 0.0 <= shape.get("dropout", 0.0) < 1.0:
        raise PicoError(f"--dropout must be in [0, 1), got {shape['dropout']}")


def check_cooldown(tc: TrainConfig, config: GPTConfig, data: Any, bytes_per_token: int) -> None:
    """A --cooldown-windows that cannot work is refused before training, not when the cooldown starts: its
    sequences must fit the training text and the memory."""
    rows, windows = step_shape(tc, tc.max_iters, tc.max_iters)
    if tc.schedule != "wsd" or windows == tc.seq_windows:
        return
    chars = windows * config.context_len
    train = getattr(data, "train", None)
    if train is not None and len(train) < chars + 1:
        raise PicoError(f"--cooldown-windows {windows}: a cooldown sequence of {chars:,} characters is longer than "
                        f"the {len(train):,} training characters; lower it (0 keeps --seq-windows)")
    check_memory(rows * chars * bytes_per_token, f"a cooldown batch of {rows} x {chars:,} characters",
                 "--cooldown-windows")


def settle_cooldown(tc: TrainConfig, wanted: int | None, fits: Callable[[TrainConfig], None],
                    warn: Callable[[str], None]) -> TrainConfig:
    """On --resume: the stored --cooldown-windows, unless it cannot work and a new one was given (a stored value
    that cannot work could otherwise never be fixed)."""
    if wanted is None or wanted == tc.cooldown_windows:
        fits(tc)
        return tc
    try:
        fits(tc)
    except PicoError as exc:
        warn(f"note: the checkpoint's --cooldown-windows {tc.cooldown_windows} cannot work ({exc}); "
             f"--cooldown-windows {wanted} replaces it")
        fits(replace(tc, cooldown_windows=wanted))
        return replace(tc, cooldown_windows=wanted)
    warn(f"warning: --cooldown-windows {wanted} is ignored on --resume; the checkpoint's {tc.cooldown_windows} "
         "is kept")
    return tc


RESUME_HELP = """Continue from OUT/ckpt.pt exactly where it stopped. The checkpoint's model, optimizer, recipe
(batch size, windows, lr, schedule, seed, ...) and data (--dataset, --data, --data-files, ...) are kept: a
different --model or --optimizer is refused, other recipe and data flags that differ are ignored with a warning;
a new --max-iters sets a new end for the schedule."""

# Checkpoints written before presets and Muon trained with AdamW and a cosine schedule.
LEGACY_TRAIN = {"optimizer": "adamw", "schedule": "cosine", "cooldown_frac": 0.0, "cooldown_windows": 0}


@dataclass
class Resumed:
    """What a resumed run continues with; `new_end` is a new last step for the schedule, or None."""

    tc: TrainConfig
    config: GPTConfig
    data: DataConfig
    new_end: int | None
    cooldown_windows: int | None = None  # asked for on the command line (see settle_cooldown)


def resumed_config(state: dict[str, Any], tc: TrainConfig, config: GPTConfig | None, data: DataConfig,
                   ckpt_path: Path, max_iters_set: bool, explicit: frozenset[str],
                   warn: Callable[[str], None]) -> Resumed:
    """The stored run's recipe, model and data; refuse a different model or optimizer, warn of ignored flags.

    `explicit` names the TrainConfig and DataConfig fields the user set on the command line.
    """
    if "optimizer" not in state or "train_config" not in state:
        raise PicoError(f"{ckpt_path} has no optimizer state to resume from")
    if CharTokenizer.from_json(state["tokenizer"]) != CharTokenizer():
        raise PicoError(f"{ckpt_path} was trained with another tokenizer than picogpt-train's: it cannot be resumed "
                        "(its ids would change meaning)")
    for key in ("step", "horizon", "elapsed", "rng"):
        if key not in state:
            raise PicoError(f"{ckpt_path} lacks '{key}': it cannot be resumed")
    stored_config = GPTConfig.from_dict(state["config"])
    stored = {**LEGACY_TRAIN, "model": preset_of(stored_config), **state["train_config"]}
    for key in ("model", "optimizer"):
        if key in explicit and getattr(tc, key) != stored[key]:
            raise PicoError(f"{ckpt_path} was trained with --{key} {stored[key]}, not {getattr(tc, key)}: "
                            f"resume without --{key}, or train a new run in another --out")
    if config is not None and config != stored_config:
        raise PicoError(f"{ckpt_path} was trained with another model config: {state['config']}")
    skip = {"max_iters", "model", "optimizer", "cooldown_windows"}  # cooldown_windows: settle_cooldown
    for key in sorted((explicit & set(TrainConfig.__dataclass_fields__)) - skip):
        if key in stored and getattr(tc, key) != stored[key]:
            warn(f"warning: --{key.replace('_', '-')} {getattr(tc, key)} is ignored on --resume; "
                 f"the checkpoint's {stored[key]} is kept")
    stored_data = DataConfig.from_checkpoint(state)
    if "data_config" not in state:  # older checkpoints stored the dataset at most: the rest comes from this command
        stored_data = replace(data, dataset=stored_data.dataset if stored_data else data.dataset)
    for key, flag in DataConfig.FLAGS.items():
        if key in explicit and getattr(data, key) != getattr(stored_data, key):
            warn(f"warning: {flag} {getattr(data, key)} is ignored on --resume; the checkpoint's "
                 f"{getattr(stored_data, key)} is kept")
    # A --max-iters that differs from the stored one sets a new end for the schedule (extend or cut
    # short); otherwise the stored schedule, time-fitted or not, continues exactly.
    new_end = tc.max_iters if max_iters_set and tc.max_iters != stored["max_iters"] else None
    fields = {k: v for k, v in stored.items() if k in TrainConfig.__dataclass_fields__}
    resumed = TrainConfig(**{**fields, "max_iters": tc.max_iters if max_iters_set else stored["max_iters"]})
    wanted = tc.cooldown_windows if "cooldown_windows" in explicit else None
    return Resumed(resumed, stored_config, stored_data, new_end, wanted)


def cooldown_cost(tc: TrainConfig, horizon: int, context_len: int, time_step: Callable[[int, int], float]) -> float:
    """A cooldown step's cost in stable steps, timed once before training with `time_step(rows, length)`: the
    cooldown's batches may hold fewer, longer sequences. 1.0 when the shape stays. Never below 1: a cheaper
    cooldown only ends the run a little early, a timing that errs low would cut the cooldown off."""
    rows, windows = step_shape(tc, horizon, horizon)
    if windows == tc.seq_windows:
        return 1.0
    stable = time_step(tc.batch_size, tc.seq_windows * context_len)
    return max(1.0, time_step(rows, windows * context_len) / stable)


class HorizonFitter:
    """With a time budget, fit the schedule's last step to the minutes, so the cooldown ends when time does.

    A first fit after 3 steps of this process, then a refit at every eval until the cooldown starts,
    from the wall time per step since then (evals included). A cooldown step costs `cooldown_cost` stable
    steps (its batch may hold longer sequences: timed before training). The horizon is stored in the checkpoint.
    """

    def __init__(self, tc: TrainConfig, budget_s: float, cap: int | None, cooldown_cost: float = 1.0) -> None:
        self.tc, self.budget_s, self.cap, self.cooldown_cost = tc, budget_s, cap, cooldown_cost
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
        # The time left buys (1 - f) H - step stable steps and f H cooldown steps at cooldown_cost each.
        f = self.tc.cooldown_frac if self.tc.schedule == "wsd" else 0.0
        fitted = int(((self.budget_s - elapsed) * 0.98 / per_step + step) / (1.0 - f + f * self.cooldown_cost))
        fitted = max(step + 1, min(self.cap, fitted) if self.cap else fitted)
        return dist.from_main(fitted)  # every rank must stop at the same step
