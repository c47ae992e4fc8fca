"""The model's shape, as a dataclass: shared by training, export and the torch-free runtime."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from picogpt.errors import PicoError, check_type

# Every LayerNorm's epsilon: the torch model's and the fused graph's LayerNormalization must agree.
LN_EPS = 1e-5


@dataclass(frozen=True)
class GPTConfig:
    """Hyper-parameters of the PicoGPT model (the seed's defaults: 6.34M parameters).

    `context_len` is the number of characters in one window; each window also has one
    extra leading slot (position 0) that carries the previous window's context vector,
    so the position table has `context_len + 1` rows.
    """

    context_len: int = 128
    vocab_size: int = 88
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        # a config read from a file is checked like a flag: a string or a float where a size goes is refused here
        for name in ("context_len", "vocab_size", "n_layer", "n_head", "n_embd"):
            check_type(getattr(self, name), f"config: {name}", "int")
        check_type(self.dropout, "config: dropout", "number")
        if not isinstance(self.bias, bool):
            raise PicoError(f"config: bias must be true or false, got {self.bias!r}")
        for name in ("context_len", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise PicoError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise PicoError(f"config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise PicoError(f"config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_positions(self) -> int:
        """Rows of the position table: the context slot plus `context_len` characters."""
        return self.context_len + 1

    def num_params(self, include_positions: bool = False) -> int:
        """Parameter count computed from the shape alone (lm_head is tied to wte).

        Like nanoGPT, the reported figure excludes the position table.
        """
        e, b = self.n_embd, int(self.bias)
        ln = 2 * e if self.bias else e
        per_layer = (
            ln  # ln_1
            + e * 3 * e + b * 3 * e  # attn.c_attn
            + e * e + b * e  # attn.c_proj
            + ln  # ln_2
            + e * 4 * e + b * 4 * e  # mlp.c_fc
            + 4 * e * e + b * e  # mlp.c_proj
        )
        total = self.vocab_size * e + self.n_layer * per_layer + ln
        if include_positions:
            total += self.n_positions * e
        return total

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        if not isinstance(d, dict):
            raise PicoError(f"config: a dict of model settings is needed, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise PicoError(f"config: unknown fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> GPTConfig:
        try:
            return cls.from_dict(json.loads(s))
        except (ValueError, TypeError) as exc:
            raise PicoError(f"config: not a valid GPTConfig JSON ({exc})") from None
