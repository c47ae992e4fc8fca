"""The one generation loop (torch-free), shared by `GPT.generate`, the runtime's `Generator`, the export's
verification and the bench engines.

A decoder is anything with `config`, `new_state(batch)` and `feed(ids [B, T], state) -> logits [B, V]`
(numpy; the state is updated in place): `picogpt.model.TorchDecoder` over `GPT.decode`, the runtime's
`OnnxDecoder`, the bench's naive torch engine. The loop prefills the prompt a window at a time, then
samples, yields and feeds one id per step. `StopMatcher` cuts streamed text before stop strings.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from picogpt.config import GPTConfig
from picogpt.errors import PicoError, PicoTypeError, check_type
from picogpt.sampling import Sampler, SamplingConfig
from picogpt.system import check_memory
from picogpt.tokenizer import CharTokenizer


class Decoder(Protocol):
    config: GPTConfig

    def new_state(self, batch: int = 1) -> Any: ...

    def feed(self, ids: np.ndarray, state: Any) -> np.ndarray: ...


@dataclass
class GenerationStats:
    """What the last generation took: prefill apart from the per-token steps (`--stats`)."""

    prompt_ids: int = 0
    prefill_s: float = 0.0
    tokens: int = 0
    decode_s: float = 0.0  # from the first new id to the last: tokens - 1 steps
    rollovers: int = 0  # steps that started a new window (re-reading the overlap)
    rollover_s: float = 0.0  # the time of those steps

    @property
    def ms_per_token(self) -> float:
        return 1000 * self.decode_s / max(1, self.tokens - 1)

    @property
    def overlap_share(self) -> float:
        """The share of decode time spent re-reading overlaps: roll-over steps beyond an ordinary step's time."""
        plain = self.tokens - 1 - self.rollovers
        if not self.rollovers or plain <= 0 or self.decode_s <= 0:
            return 0.0
        step = (self.decode_s - self.rollover_s) / plain
        return max(0.0, self.rollover_s - self.rollovers * step) / self.decode_s


def check_request(max_new_tokens: int, num_samples: int = 1, seed: int | None = None,
                  sampling: SamplingConfig | None = None, config: GPTConfig | None = None) -> None:
    """The arguments of a generation, checked once for the API and the CLI alike, before any work."""
    check_type(max_new_tokens, "max_new_tokens", "int")
    check_type(num_samples, "num_samples", "int")
    check_type(seed, "seed", "int", allow_none=True)
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise PicoTypeError(f"sampling must be a SamplingConfig or None, got {type(sampling).__name__}")
    if max_new_tokens < 0:
        raise PicoError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if num_samples < 1:
        raise PicoError(f"--num-samples must be >= 1, got {num_samples}")
    if seed is not None and seed < 0:
        raise PicoError(f"--seed must be >= 0, got {seed}")
    if config is not None:
        if sampling is not None:
            sampling.validate(config.vocab_size)
        # per sample: the KV cache of a window, the logits, the text and its stop matcher
        per_sample = 4 * (2 * config.n_layer * config.n_positions * config.n_embd + 4 * config.vocab_size) + 1024
        check_memory(num_samples * per_sample, f"{num_samples:,} samples", "--num-samples")


def prefill(decoder: Decoder, ids: np.ndarray, state: Any, progress: bool = False) -> np.ndarray:
    """Feed a prompt [B, T] a window at a time; with `progress`, one that takes over a second shows how far
    it got on stderr. Returns the logits after the last id."""
    if ids.shape[1] == 0:
        raise PicoError("nothing to feed: a prompt needs at least one id")
    t0, step, shown = time.perf_counter(), decoder.config.context_len, False
    for start in range(0, ids.shape[1], step):
        logits = decoder.feed(ids[:, start : start + step], state)
        done = min(ids.shape[1], start + step)
        if progress and time.perf_counter() - t0 > 1.0 and done < ids.shape[1]:
            print(f"\rprefill: {done:,}/{ids.shape[1]:,} prompt characters", end="", file=sys.stderr, flush=True)
            shown = True
    if shown:
        print(file=sys.stderr)
    return logits


def generate_ids(decoder: Decoder, prompt_ids: np.ndarray, max_new_tokens: int, sampler: Sampler,
                 state: Any = None, stats: GenerationStats | None = None, progress: bool = False
                 ) -> Iterator[np.ndarray]:
    """Yield the next ids [B] per step after `prompt_ids` [B, T]; `state` (if given) continues a stream and
    `sampler` keeps its repetition history, so a caller can go on where an earlier call stopped."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_ids, stats.tokens, stats.rollovers, stats.rollover_s = prompt_ids.shape[1], 0, 0, 0.0
    if state is None:
        state = decoder.new_state(prompt_ids.shape[0])
    with claimed(state):
        yield from _generate(decoder, prompt_ids, max_new_tokens, sampler, state, stats, progress)


_BUSY: set[int] = set()  # id() of the stream states being continued right now
_BUSY_LOCK = threading.Lock()


@contextmanager
def claimed(state: Any) -> Iterator[None]:
    """Hold a stream for one generation: a second thread continuing the same stream at the same time would
    interleave its cache and context vector, so it is refused instead."""
    with _BUSY_LOCK:
        if id(state) in _BUSY:
            raise PicoError("this stream is being continued in another thread: one generation at a time per "
                            "stream (give each thread its own)")
        _BUSY.add(id(state))
    try:
        yield
    finally:
        with _BUSY_LOCK:
            _BUSY.discard(id(state))


def _generate(decoder: Decoder, prompt_ids: np.ndarray, max_new_tokens: int, sampler: Sampler, state: Any,
              stats: GenerationStats, progress: bool) -> Iterator[np.ndarray]:
    sampler.observe(prompt_ids)
    t0 = time.perf_counter()
    logits = prefill(decoder, prompt_ids, state, progress)
    stats.prefill_s = time.perf_counter() - t0
    for i in range(max_new_tokens):
        nxt = sampler.sample(logits)
        if i == 0:
            first = time.perf_counter()
        stats.tokens, stats.decode_s = i + 1, time.perf_counter() - first
        yield nxt
        if i + 1 < max_new_tokens:
            rolls = getattr(state, "pos", None) == decoder.config.n_positions  # this id starts a new window
            t = time.perf_counter()
            logits = decoder.feed(nxt[:, None], state)
            if rolls:
                stats.rollovers, stats.rollover_s = stats.rollovers + 1, stats.rollover_s + time.perf_counter() - t


def greedy_ids(decoder: Decoder, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy continuation (one stream) of `prompt_ids`: n new ids (the parity fingerprint's procedure)."""
    sampler = Sampler(SamplingConfig(temperature=0), decoder.config.vocab_size)
    return [int(t[0]) for t in generate_ids(decoder, np.array([prompt_ids], dtype=np.int64), n, sampler)]


def greedy_text(decoder: Decoder, tokenizer: CharTokenizer, prompt: str, n: int) -> str:
    """Greedy continuation of `prompt`: the text of `greedy_ids`."""
    return tokenizer.decode(greedy_ids(decoder, tokenizer.encode(prompt), n))


class StopMatcher:
    """Holds back just enough streamed text to cut it before any stop string."""

    def __init__(self, stops: str | Sequence[str]) -> None:
        # one string is one stop string (not a list of its characters)
        self.stops = [s for s in ([stops] if isinstance(stops, str) else stops) if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add generated text; return what can be shown now."""
        self.pending += text
        for s in self.stops:
            at = self.pending.find(s)
            if at >= 0:
                self.stopped = True
                out, self.pending = self.pending[:at], ""
                return out
        keep = max((len(s) - 1 for s in self.stops), default=0)
        # keep back the longest tail that could still become a stop string
        hold = 0
        for n in range(min(keep, len(self.pending)), 0, -1):
            if any(s.startswith(self.pending[-n:]) for s in self.stops):
                hold = n
                break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


class StopMatchers:
    """One `StopMatcher` per sample of a batch: each sample stops on its own."""

    def __init__(self, stops: str | Sequence[str], samples: int) -> None:
        self.matchers = [StopMatcher(stops) for _ in range(samples)]

    def push(self, texts: list[str]) -> list[str]:
        """Each sample's new text; a sample that has stopped adds nothing."""
        return ["" if m.stopped else m.push(t) for m, t in zip(self.matchers, texts)]

    @property
    def all_stopped(self) -> bool:
        return all(m.stopped for m in self.matchers)

    def flush(self) -> list[str]:
        return [m.flush() for m in self.matchers]
