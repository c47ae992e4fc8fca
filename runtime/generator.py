"""Torch-free generation: onnxruntime + numpy, everything read from the .onnx file's metadata."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from picogpt.contract import FINGERPRINT_CHARS, read_fingerprint
from picogpt.errors import PicoError, check_type
from picogpt.generation import GenerationStats, StopMatchers, check_request, generate_ids, greedy_text
from picogpt.runtime.decoder import OnnxDecoder, StreamState
from picogpt.sampling import Sampler, SamplingConfig
from picogpt.system import check_threads

BUNDLED_MODEL = "tinyshakespeare-int8.onnx"
EMPTY_PROMPT = "\n"  # an empty prompt starts a fresh paragraph: the text begins after a line break


@dataclass
class Stream:
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

    def new_stream(self, sampling: SamplingConfig | None = None, seed: int | None = None) -> Stream:
        """A stream to continue across calls (`--interactive`): its cache, context vector and sampler."""
        sampling = sampling or SamplingConfig()
        check_request(0, 1, seed, sampling, self.config)
        return Stream(self.decoder.new_state(1), Sampler(sampling, self.config.vocab_size, seed=seed))

    def stream(self, prompt: str, max_new_tokens: int = 500, sampling: SamplingConfig | None = None,
               seed: int | None = None, stop: str | Sequence[str] = (), num_samples: int = 1,
               stream: Stream | None = None) -> Iterator[str] | Iterator[list[str]]:
        """The continuation of `prompt` as it is produced, each sample cut before any `stop` string.

        One sample: yields its text piece by piece. `num_samples` > 1: yields, at every step, the list of
        each sample's new text ("" while a sample holds text back or has stopped), so a caller interrupted
        midway holds everything made so far. `stream` continues an earlier stream (`new_stream`), which
        keeps its own sampling and seed. The request is checked here, before the first piece is asked for.
        """
        if stream is not None and (num_samples != 1 or sampling is not None or seed is not None):
            raise PicoError("a Stream keeps its own sampling and seed and holds one sample: pass neither "
                            "sampling, seed nor num_samples with it")
        check_request(max_new_tokens, num_samples, seed, sampling or SamplingConfig(), self.config)
        ids = self.encode_prompt(prompt)
        if stream is None:
            stream = Stream(self.decoder.new_state(num_samples),
                            Sampler(sampling or SamplingConfig(), self.config.vocab_size, seed=seed))
        steps = self._pieces(ids, max_new_tokens, stream, StopMatchers(stop, num_samples))
        return (p[0] for p in steps if p[0]) if num_samples == 1 else steps

    def _pieces(self, prompt_ids: list[int], max_new_tokens: int, stream: Stream, stops: StopMatchers
                ) -> Iterator[list[str]]:
        """The one generation loop of the runtime: each sample's new text per step, then what was held back."""
        batch = np.tile(np.asarray(prompt_ids, dtype=np.int64), (len(stops.matchers), 1))
        for ids in generate_ids(self.decoder, batch, max_new_tokens, stream.sampler, stream.state, self.stats,
                                progress=True):
            yield stops.push([self.tokenizer.decode([int(t)]) for t in ids])
            if stops.all_stopped:
                return
        yield stops.flush()

    def generate(self, prompt: str, max_new_tokens: int = 500, sampling: SamplingConfig | None = None,
                 seed: int | None = None, stop: str | Sequence[str] = (), num_samples: int = 1) -> str | list[str]:
        """The continuation of `prompt`: a str, or a list of `num_samples` continuations when num_samples > 1."""
        pieces = self.stream(prompt, max_new_tokens, sampling, seed, stop, num_samples)
        if num_samples == 1:
            return "".join(pieces)
        texts = [""] * num_samples
        for step in pieces:
            texts = [t + p for t, p in zip(texts, step)]
        return texts

    def verify(self) -> tuple[bool, str, str]:
        """Re-run the file's parity fingerprint here: (matches, expected, got)."""
        prompt, expected = read_fingerprint(self.decoder.path, self.metadata)
        # as many ids as the exporter ran: a special token decodes to several characters, a reserved id to none
        got = greedy_text(self.decoder, self.tokenizer, prompt, FINGERPRINT_CHARS)
        return bool(expected) and got == expected, expected, got
