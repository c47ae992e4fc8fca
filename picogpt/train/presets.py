"""Model presets for `picogpt-train --model NAME`, and the `auto` choice for a time budget.

`base` is the seed's 6.34M model (the bundled one); the smaller presets trade capacity for
optimizer steps, which is what wins when the budget is a few CPU-minutes. `AUTO_TABLE` is
measured with `picogpt-bench quality` (docs/design.md): for a budget of M minutes, `auto` takes the
preset that reached the lowest full-val loss at the largest measured budget <= M.
"""

from __future__ import annotations

from dataclasses import dataclass

from picogpt.config import GPTConfig
from picogpt.errors import PicoError


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_head: int
    n_embd: int
    lr: float  # peak learning rate (Muon and AdamW share it: Muon's update is scaled to AdamW's RMS)
    batch_size: int  # sequences a step: Muon gains from larger batches, small models afford them
    # Windows per training sequence. pico takes 3 (11 x 3 = 33 windows a step, about 16 x 2's tokens): a window
    # whose carried vector comes from a window that had one itself is then in every sequence, not only in the
    # cooldown's, and window 3 of the val text stops scoring worse carried than zeroed (docs/design.md).
    seq_windows: int = 2

    def config(self, **overrides) -> GPTConfig:
        shape = {"n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd}
        return GPTConfig(**{**shape, **{k: v for k, v in overrides.items() if v is not None}})


# Learning rates and batches chosen with 2-minute runs of each preset (docs/design.md, "The recipe").
PRESETS: dict[str, Preset] = {
    "pico": Preset(n_layer=4, n_head=4, n_embd=128, lr=4e-3, batch_size=11, seq_windows=3),  # 0.80M: nanoGPT's shape
    "small": Preset(n_layer=6, n_head=6, n_embd=192, lr=3e-3, batch_size=8),  # 2.68M
    "base": Preset(n_layer=8, n_head=8, n_embd=256, lr=2e-3, batch_size=8),  # 6.34M: the seed's model, the bundled one
}
DEFAULT_PRESET = "base"

# (minutes of budget, preset that won at that budget), from `picogpt-bench quality --minutes 2,10`
# (docs/design.md, "Which preset for a budget"): budgets under 10 minutes take pico, 10 and more take small.
AUTO_TABLE: list[tuple[float, str]] = [(0.0, "pico"), (10.0, "small")]


def resolve_preset(name: str, max_minutes: float | None) -> str:
    """`auto` -> the preset measured best for `max_minutes`; other names are checked and returned."""
    if name == "auto":
        if max_minutes is None:
            raise PicoError("--model auto picks a preset for a time budget: give --max-minutes too")
        return [p for m, p in AUTO_TABLE if m <= max_minutes][-1]
    if name not in PRESETS:
        raise PicoError(f"unknown --model {name!r}; choose one of: {', '.join([*PRESETS, 'auto'])}")
    return name


def preset_of(config: GPTConfig) -> str:
    """The preset name whose shape `config` has (dropout aside), else "custom"."""
    for name, p in PRESETS.items():
        if (config.n_layer, config.n_head, config.n_embd, config.context_len, config.vocab_size) == \
                (p.n_layer, p.n_head, p.n_embd, GPTConfig.context_len, GPTConfig.vocab_size):
            return name
    return "custom"
