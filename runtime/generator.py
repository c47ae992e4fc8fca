"""Torch-free generation: onnxruntime + numpy, everything read from the .onnx file's metadata."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from picogpt.contract import FINGERPRINT_CHARS, read_fingerprint
from picogpt.errors import PicoError, check_type
from picogpt.generation import GenerationStats, StopMatcher, check_request, generate_ids, greedy_text
from picogpt.runtime.decoder import OnnxDecoder, StreamState
from picogpt.sampling import Sampler, SamplingConfig
from picogpt.system import check_threads

BUNDLED_MODEL = "tinyshakespeare-int8.onnx"
EMPTY_PROMPT = "\n"  # an empty prompt starts a fresh paragraph: the text begins after a line break


@dataclass
class Session:
    """One stream continued across calls: the decoder state and the sampler (its rng and history)."""

    state: StreamState
    sampler: Sampler


def bundled_model_path() -> Path:
    """The tinyshakespeare model shipped inside the package."""
    return Path(str(resources.files("picogpt.runtime") / "models" / BUNDLED_MODEL))


class Generator:
    """Generate text from a PicoGPT .onnx file (default: the bundled tinyshakespeare model).

    >>> g = Generator()                      # doctest: +SKIP
    >>> g.generate("ROMEO:", max_new_tokens=100, sampling=SamplingConfig(temperature=0.8), seed=0)  # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike | None = None, threads: int | None = 1,
                 overlap: int | None = None) -> None:
        """`overlap`: characters each new window re-reads (default: the file's own, `picogpt.overlap`)."""
        check_threads(threads, "threads")
        self.decoder = OnnxDecoder(model if model is not None else bundled_model_path(), threads=threads,
                                   overlap=overlap)
        self.tokenizer = self.decoder.tokenizer
        self.config = self.decoder.config
        self.metadata = self.decoder.metadata
        self.stats = GenerationStats()  # of the last generation (prefill and per-token time)

    def encode_prompt(self, prompt: str, warn: bool = True) -> list[int]:
        """Ids of `prompt` (an empty one starts a new line); unknown characters become <?>, with a warning."""
        check_type(prompt, "prompt", "str")
        enc = self.tokenizer.encode_counted(prompt if prompt else EMPTY_PROMPT)
        if enc.unknown and warn:
            print(f"warning: {enc.unknown} prompt character(s) are not in the vocabulary; they become <?>",
                  file=sys.stderr)
        return enc.ids

    def session(self, sampling: SamplingConfig | None = None, seed: int | None = None) -> Session:
        """A stream to continue across calls (`--interactive`): its cache, context vector and sampler."""
        sampling = (sampling or SamplingConfig()).validate(self.config.vocab_size)
        check_request(0, seed=seed)
        return Session(self.decoder.new_state(1), Sampler(sampling, self.config.vocab_size, seed=seed))

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, sampling: SamplingConfig | None = None,
                   seed: int | None = None, num_samples: int = 1, session: Session | None = None
                   ) -> Iterator[np.ndarray]:
        """Yield the next ids [num_samples] per step; `session` (if given) continues an earlier stream."""
        sampling = sampling or SamplingConfig()
        check_request(max_new_tokens, num_samples, seed, sampling, self.config)
        if session is not None and num_samples != 1:
            raise PicoError("a session continues one stream: num_samples must be 1")
        if session is None:
            sampler = Sampler(sampling, self.config.vocab_size, seed=seed)
            session = Session(self.decoder.new_state(num_samples), sampler)
        batch = np.tile(np.asarray(prompt_ids, dtype=np.int64), (num_samples, 1))
        return generate_ids(self.decoder, batch, max_new_tokens, session.sampler, session.state, self.stats,
                            progress=True)

    def stream(self, prompt: str, max_new_tokens: int = 500, sampling: SamplingConfig | None = None,
               seed: int | None = None, stop: str | Sequence[str] = (), session: Session | None = None
               ) -> Iterator[str]:
        """Yield text pieces of one sample as they are produced (cut before any `stop` string)."""
        matcher = StopMatcher(stop)
        for ids in self.stream_ids(self.encode_prompt(prompt), max_new_tokens, sampling, seed, session=session):
            piece = matcher.push(self.tokenizer.decode([int(ids[0])]))
            if piece:
                yield piece
            if matcher.stopped:
                return
        rest = matcher.flush()
        if rest:
            yield rest

    def generate(self, prompt: str, max_new_tokens: int = 500, sampling: SamplingConfig | None = None,
                 seed: int | None = None, stop: str | Sequence[str] = (), num_samples: int = 1) -> str | list[str]:
        """The continuation of `prompt`: a str, or a list of `num_samples` continuations when num_samples > 1."""
        last = deque(self.stream_samples(self.encode_prompt(prompt), max_new_tokens, sampling, seed, stop,
                                         num_samples), maxlen=1)
        texts = last[0]
        return texts if num_samples > 1 else texts[0]

    def stream_samples(self, prompt_ids: list[int], max_new_tokens: int, sampling: SamplingConfig | None,
                       seed: int | None, stop: str | Sequence[str], num_samples: int) -> Iterator[list[str]]:
        """Yield every sample's text so far after each step (each cut before its stop strings); the
        last list yielded is complete. A caller interrupted midway still holds the text made so far."""
        check_request(max_new_tokens, num_samples, seed, sampling, self.config)
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
        prompt, expected = read_fingerprint(self.decoder.path, self.metadata)
        got = greedy_text(self.decoder, self.tokenizer, prompt, len(expected) or FINGERPRINT_CHARS)
        return bool(expected) and got == expected, expected, got
