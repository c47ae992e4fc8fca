"""How new tokens are cut into window chunks: the one rule the torch decode and the ONNX runtime share.

A window holds `n_positions = context_len + 1` positions: the slot (position 0) and up to
`context_len` characters. Feeding `n_new` tokens after `pos` filled positions yields chunks;
a chunk that starts a new window first rolls the context vector over (if a window was
full) and is prefixed by the slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Text is scored and benchmarked in streams of 10 windows (1,280 characters by default): long enough that
# most positions sit in a window that got a carried context vector, as in a long generation.
STREAM_WINDOWS = 10


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


def stream_batches(ids, seq_chars: int, batch_size: int):
    """Text as the runtime streams it, for scoring: (inputs, targets) [b, seq_chars] batches of consecutive
    sequences covering every target of `ids` after the first once; the last, shorter sequence comes alone.

    Shared by the torch scorer (picogpt.train.evaluate) and the runtime scorer (picogpt-bench quality --onnx).
    """
    import numpy as np

    x_all, y_all = np.asarray(ids[:-1], dtype=np.int64), np.asarray(ids[1:], dtype=np.int64)
    full = len(x_all) // seq_chars
    xs, ys = x_all[: full * seq_chars].reshape(full, seq_chars), y_all[: full * seq_chars].reshape(full, seq_chars)
    for b in range(0, full, batch_size):
        yield xs[b : b + batch_size], ys[b : b + batch_size]
    if len(x_all) > full * seq_chars:
        yield x_all[full * seq_chars :][None], y_all[full * seq_chars :][None]
