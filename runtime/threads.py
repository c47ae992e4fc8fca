"""How many onnxruntime threads a decode step should use, measured at load.

One batch-1 decode step of the 6.34M model is ~90 small kernels of a few microseconds each: a second
intra-op thread must be woken and joined per kernel, which can cost more than the half of a 256-wide
product it takes over, and on a shared box the second core may be busy. So a decoder allowed T > 1
threads times a few steps at 1 and at T threads (interleaved, best of rounds) and keeps the faster:
more threads are used only where they measure faster, and decode is never slower than at 1 thread
(up to the noise of a ~50 ms measurement). Batches and long prefills, where kernels are larger, gain
more from threads than this batch-1 test shows.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from picogpt.runtime.decoder import OnnxDecoder


def step_ms(decoder: OnnxDecoder, steps: int = 20, past: int = 64) -> float:
    """Best ms of one single-token feed onto `past` cached rows (the window rewound between steps)."""
    past = min(past, decoder.config.n_positions - 1)
    state = decoder.new_state(1)
    decoder.feed(np.full((1, past - 1), 1, dtype=np.int64), state)
    token, best = np.array([[1]], dtype=np.int64), float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        decoder.feed(token, state)
        best = min(best, time.perf_counter() - t)
        decoder.rewind(state, past)
    return best * 1000


def fastest_decoder(path: str | Path, threads: int, overlap: int | None = None, rounds: int = 3) -> OnnxDecoder:
    """An OnnxDecoder at 1 or `threads` intra-op threads, whichever decodes faster here; `threads_used` says
    which."""
    one = OnnxDecoder(path, threads=1, overlap=overlap)
    one.threads_used = 1
    if threads <= 1:
        return one
    many = OnnxDecoder(path, threads=threads, overlap=overlap)
    many.threads_used = threads
    times = {1: [], threads: []}
    for _ in range(rounds):
        for decoder in (one, many):
            times[decoder.threads_used].append(step_ms(decoder))
    return many if min(times[threads]) < min(times[1]) else one
