"""How new tokens are cut into window chunks: the one rule the torch decode and the ONNX runtime share.

A window holds `n_positions = context_len + 1` positions: the slot (position 0) and up to
`context_len` characters. Feeding `n_new` tokens after `pos` filled positions yields chunks;
a chunk that starts a new window first rolls the context vector over (if a window was
full) and is prefixed by the slot.

The overlap K: a window that follows a full one re-reads the last K characters of the stream
after its slot, so its first new character is predicted from K characters of context instead
of none. The cost is one K-row prefill every `context_len - K` new characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from picogpt.errors import PicoError

# Text is scored and benchmarked in streams of 10 windows (1,280 characters by default): long enough that
# most positions sit in a window that got a carried context vector, as in a long generation.
STREAM_WINDOWS = 10
# Unless told otherwise, a new window re-reads a quarter of a window, 32 of 128 characters: past that the val
# loss stops falling while the prefill keeps costing more (docs/design.md, "The roll-over").
OVERLAP_SHARE = 4


@dataclass(frozen=True)
class Chunk:
    start: int  # index of the chunk's first new token
    take: int  # how many new tokens it holds
    pos: int  # window position of its first row (0 when it starts with the slot)
    roll_over: bool  # a full window ends here: context = hidden_sum / n_positions, cache cleared
    replay: int = 0  # ids already in the stream that the new window re-reads after its slot

    @property
    def with_slot(self) -> bool:
        return self.pos == 0


def check_overlap(overlap: int, context_len: int, flag: str = "--overlap") -> int:
    """An overlap a window of `context_len` characters can hold next to at least one new character."""
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < context_len:
        raise PicoError(f"{flag} must be a whole number from 0 to {context_len - 1} (the window holds "
                        f"{context_len} characters), got {overlap!r}")
    return overlap


def resolve_overlap(overlap: int | None, context_len: int, flag: str = "--overlap") -> int:
    """`overlap`, checked, or the default for windows of `context_len` characters (None)."""
    return context_len // OVERLAP_SHARE if overlap is None else check_overlap(overlap, context_len, flag)


def plan_chunks(pos: int, n_new: int, context_len: int, overlap: int = 0) -> Iterator[Chunk]:
    """Yield the chunks that feed `n_new` tokens to a stream whose window has `pos` rows filled; a window
    that follows a full one first re-reads the stream's last `overlap` ids."""
    n_positions = context_len + 1
    i = 0
    while i < n_new:
        roll = pos == n_positions
        replay = overlap if roll else 0
        if roll:
            pos = 0
        take = min(n_positions - max(pos, 1) - replay, n_new - i)
        yield Chunk(start=i, take=take, pos=pos, roll_over=roll, replay=replay)
        pos += take + replay + (1 if pos == 0 else 0)
        i += take


def chunk_ids(chunk: Chunk, ids, recent, cat: Callable):
    """The ids [B, replay + take] a chunk feeds (after its slot): the replayed end of the stream, then its new
    ids. `recent` holds the stream's last ids before `ids`; `cat` joins arrays along dim 1 (numpy or torch)."""
    new = ids[:, chunk.start : chunk.start + chunk.take]
    if not chunk.replay:
        return new
    return cat([cat([recent, ids[:, : chunk.start]])[:, -chunk.replay :], new])


def keep_recent(recent, ids, overlap: int, cat: Callable):
    """The stream's last `overlap` ids after `ids` was fed (what a later roll-over re-reads)."""
    return cat([recent, ids])[:, -overlap:] if overlap else recent


def window_spans(n: int, context_len: int, overlap: int) -> Iterator[tuple[int, int]]:
    """(first new target, replayed ids) of each window that scores `n` consecutive targets as generation feeds
    them: the first window takes `context_len`, each later one `context_len - overlap` after its replay."""
    start = 0
    while start < n:
        replay = overlap if start else 0
        yield start, replay
        start += context_len - replay


def stream_batches(ids, seq_chars: int, batch_size: int, lead: int = 0):
    """Text as the runtime streams it, for scoring: (inputs [b, lead + n], targets [b, n], lead) batches of
    consecutive sequences that score every target of `ids` after the first once. Each sequence but the first
    starts by reading the `lead` characters before its own, unscored, as a long generation would have them
    (give the overlap: then no window after the text's first is predicted from fewer characters than in
    generation). The first sequence and the last, shorter one come alone.

    Shared by the torch scorer (picogpt.train.evaluate) and the runtime scorer (picogpt-bench quality --onnx).
    """
    import numpy as np

    x_all, y_all = np.asarray(ids[:-1], dtype=np.int64), np.asarray(ids[1:], dtype=np.int64)
    starts = list(range(0, len(x_all), seq_chars))
    full = [s for s in starts[1:] if s + seq_chars <= len(x_all)]
    yield x_all[None, :seq_chars], y_all[None, :seq_chars], 0
    for b in range(0, len(full), batch_size):
        group = full[b : b + batch_size]
        yield (np.stack([x_all[s - lead : s + seq_chars] for s in group]),
               np.stack([y_all[s : s + seq_chars] for s in group]), lead)
    if len(starts) > 1 and starts[-1] + seq_chars > len(x_all):
        yield x_all[None, starts[-1] - lead :], y_all[None, starts[-1] :], lead
