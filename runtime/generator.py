"""Torch-free generation: onnxruntime + numpy, everything read from the .onnx file's metadata."""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from picogpt.errors import PicoError
from picogpt.onnx_io import FINGERPRINT_CHARS, OnnxDecoder, StreamState
from picogpt.sampling import Sampler, SamplingConfig
from picogpt.system import check_memory, check_threads

BUNDLED_MODEL = "tinyshakespeare-int8.onnx"
EMPTY_PROMPT = "\n"  # an empty prompt starts a fresh paragraph: the text begins after a line break


def bundled_model_path() -> Path:
    """The tinyshakespeare model shipped inside the package."""
    return Path(str(resources.files("picogpt.runtime") / "models" / BUNDLED_MODEL))


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


class Generator:
    """Generate text from a PicoGPT .onnx file (default: the bundled tinyshakespeare model).

    >>> g = Generator()                      # doctest: +SKIP
    >>> g.generate("ROMEO:", max_new_tokens=100, seed=0)   # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike | None = None, threads: int | None = 1) -> None:
        check_threads(threads)
        self.decoder = OnnxDecoder(model if model is not None else bundled_model_path(), threads=threads)
        self.tokenizer = self.decoder.tokenizer
        self.config = self.decoder.config
        self.metadata = self.decoder.metadata
        self.prefill_seconds = 0.0  # of the last prompt fed (see prefill)

    def encode_prompt(self, prompt: str, warn: bool = True) -> list[int]:
        enc = self.tokenizer.encode_counted(prompt if prompt else EMPTY_PROMPT)
        if enc.unknown and warn:
            print(f"warning: {enc.unknown} prompt character(s) are not in the vocabulary; they become <?>",
                  file=sys.stderr)
        return enc.ids

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, sampling: SamplingConfig,
                   seed: int | None = None, num_samples: int = 1,
                   state: StreamState | None = None) -> Iterator[np.ndarray]:
        """Yield the next ids [num_samples] per step; `state` (if given) continues an earlier stream."""
        if max_new_tokens < 0:
            raise PicoError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
        if num_samples < 1:
            raise PicoError(f"--num-samples must be >= 1, got {num_samples}")
        if seed is not None and seed < 0:
            raise PicoError(f"--seed must be >= 0, got {seed}")
        c = self.config  # per sample: the KV cache of a window and the logits
        check_memory(num_samples * 4 * (2 * c.n_layer * c.n_positions * c.n_embd + 4 * c.vocab_size),
                     f"{num_samples:,} samples", "--num-samples")
        sampler = Sampler(sampling, self.config.vocab_size, seed=seed)
        batch = np.tile(np.asarray(prompt_ids, dtype=np.int64), (num_samples, 1))
        state = state if state is not None else self.decoder.new_state(num_samples)
        sampler.observe(batch)
        logits = self.prefill(batch, state)
        for i in range(max_new_tokens):
            nxt = sampler.sample(logits)
            yield nxt
            if i + 1 < max_new_tokens:
                logits = self.decoder.feed(nxt[:, None], state)

    def prefill(self, ids: np.ndarray, state: StreamState) -> np.ndarray:
        """Feed a prompt [B, T] a window at a time; a prompt that takes over a second shows its progress on
        stderr. The seconds it took are kept in `self.prefill_seconds` (`--stats` reports them apart)."""
        t0 = time.perf_counter()
        step = self.config.context_len
        shown = False
        for start in range(0, ids.shape[1], step):
            logits = self.decoder.feed(ids[:, start : start + step], state)
            done = min(ids.shape[1], start + step)
            if time.perf_counter() - t0 > 1.0 and done < ids.shape[1]:
                print(f"\rprefill: {done:,}/{ids.shape[1]:,} prompt characters", end="", file=sys.stderr, flush=True)
                shown = True
        if shown:
            print(file=sys.stderr)
        self.prefill_seconds = time.perf_counter() - t0
        return logits

    def stream(self, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8, top_k: int | None = None,
               top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
               stop: str | Sequence[str] = ()) -> Iterator[str]:
        """Yield text pieces of one sample as they are produced (cut before any `stop` string)."""
        sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
        matcher = StopMatcher(stop)
        for ids in self.stream_ids(self.encode_prompt(prompt), max_new_tokens, sampling, seed):
            piece = matcher.push(self.tokenizer.decode([int(ids[0])]))
            if piece:
                yield piece
            if matcher.stopped:
                return
        rest = matcher.flush()
        if rest:
            yield rest

    def generate(self, prompt: str, max_new_tokens: int = 500, temperature: float = 0.8, top_k: int | None = None,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 stop: str | Sequence[str] = (), num_samples: int = 1) -> str | list[str]:
        """The continuation of `prompt` (a list of `num_samples` continuations when > 1)."""
        sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
        last = deque(self.stream_samples(self.encode_prompt(prompt), max_new_tokens, sampling, seed, stop,
                                         num_samples), maxlen=1)
        texts = last[0]
        return texts[0] if num_samples == 1 else texts

    def stream_samples(self, prompt_ids: list[int], max_new_tokens: int, sampling: SamplingConfig,
                       seed: int | None, stop: str | Sequence[str], num_samples: int) -> Iterator[list[str]]:
        """Yield every sample's text so far after each step (each cut before its stop strings); the
        last list yielded is complete. A caller interrupted midway still holds the text made so far."""
        matchers = [StopMatcher(stop) for _ in range(num_samples)]
        texts = ["" for _ in range(num_samples)]
        for ids in self.stream_ids(prompt_ids, max_new_tokens, sampling, seed, num_samples):
            for r, t in enumerate(ids):
                if not matchers[r].stopped:
                    texts[r] += matchers[r].push(self.tokenizer.decode([int(t)]))
            if all(m.stopped for m in matchers):
                break
            yield texts
        yield [t + m.flush() for t, m in zip(texts, matchers)]

    def verify(self) -> tuple[bool, str, str]:
        """Re-run the file's parity fingerprint here: (matches, expected, got)."""
        import json

        fp = json.loads(self.metadata.get("fingerprint", "{}"))
        expected = fp.get("greedy", "")
        got = self.decoder.greedy(fp.get("prompt", ""), len(expected) or FINGERPRINT_CHARS)
        return bool(expected) and got == expected, expected, got
