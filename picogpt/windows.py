"""How new tokens are cut into window chunks: the one rule the torch decode and the ONNX runtime share.

A window holds `n_positions = context_len + 1` positions: the slot (position 0) and up to
`context_len` characters. Feeding `n_new` tokens after `pos` filled positions yields chunks;
a chunk that starts a new window first rolls the context vector over (if a window was
full) and is prefixed by the slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    start: int  # index of the chunk's first new token
    take: int  # how many new tokens it holds
    pos: int  # window position of its first row (0 when it starts with the slot)
    roll_over: bool  # a full window ends here: context = hidden_sum / n_positions, cache cleared

    @property
    def with_slot(self) -> bool:
        return self.pos == 0


def plan_chunks(pos: int, n_new: int, context_len: int) -> Iterator[Chunk]:
    """Yield the chunks that feed `n_new` tokens to a stream whose window has `pos` rows filled."""
    n_positions = context_len + 1
    i = 0
    while i < n_new:
        roll = pos == n_positions
        if roll:
            pos = 0
        take = min(n_positions - max(pos, 1), n_new - i)
        yield Chunk(start=i, take=take, pos=pos, roll_over=roll)
        pos += take + (1 if pos == 0 else 0)
        i += take
