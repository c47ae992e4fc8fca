"""Next-token sampling in numpy, shared by the torch `generate()` and the ONNX runtime.

One implementation on both paths means the same seed gives the same text whichever engine
produced the logits. Order of operations (as in Hugging Face `generate`): repetition penalty,
temperature, top-k, top-p, then one categorical draw per row (Gumbel-max).
Temperature 0 means greedy argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from picogpt.errors import PicoError, check_type


@dataclass(frozen=True)
class SamplingConfig:
    """User-facing sampling knobs; `validate` gives one-line errors for nonsense values."""

    temperature: float = 0.8
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        check_type(self.temperature, "temperature", "number")
        check_type(self.top_k, "top_k", "int", allow_none=True)
        check_type(self.top_p, "top_p", "number")
        check_type(self.repetition_penalty, "repetition_penalty", "number")

    def validate(self, vocab_size: int) -> SamplingConfig:
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise PicoError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and not 1 <= self.top_k <= vocab_size:
            raise PicoError(f"--top-k must be between 1 and the vocabulary size {vocab_size}, got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise PicoError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise PicoError(f"--repetition-penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        return self


LOGIT_LIMIT = 1e300
NOISE_BLOCK = 1 << 15  # values of Gumbel noise drawn at once (256 KB)


class Sampler:
    """Stateful sampler for a batch: its own RNG and, for the repetition penalty, a seen-ids mask."""

    def __init__(self, config: SamplingConfig, vocab_size: int, seed: int | None = None) -> None:
        self.config = config.validate(vocab_size)
        self.vocab_size = vocab_size
        self.rng = np.random.default_rng(seed)
        self.seen: np.ndarray | None = None  # [B, V] bool, only kept when the penalty is on
        self.noise, self.used = np.empty(0), 0  # Gumbel noise drawn ahead, and how much of it is spent

    def observe(self, ids: np.ndarray) -> None:
        """Record ids [B, T] (prompt or generated) for the repetition penalty."""
        if self.config.repetition_penalty == 1.0:
            return
        ids = np.asarray(ids).reshape(ids.shape[0], -1)
        if self.seen is None:
            self.seen = np.zeros((ids.shape[0], self.vocab_size), dtype=bool)
        np.put_along_axis(self.seen, ids, True, axis=1)

    def sample(self, logits: np.ndarray) -> np.ndarray:
        """logits [B, V] -> next ids [B] (int64); the ids are observed automatically."""
        cfg = self.config
        logits = np.array(logits, dtype=np.float64)  # a copy: callers' buffers stay untouched
        with np.errstate(over="ignore", under="ignore"):
            if self.seen is not None:
                penalised = np.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
                # an extreme penalty overflows: clipped, the order of the logits (all the draw needs) is kept
                logits = np.clip(np.where(self.seen, penalised, logits), -LOGIT_LIMIT, LOGIT_LIMIT)
            scaled = logits / cfg.temperature if cfg.temperature else None
        if scaled is None or not np.isfinite(scaled).all():
            # temperature 0, or so close to it that logits / T overflow: the limit of sampling is greedy
            ids = logits.argmax(axis=-1)
        else:
            ids = self._draw(scaled)
        self.observe(ids[:, None])
        return ids.astype(np.int64)

    def _draw(self, logits: np.ndarray) -> np.ndarray:
        """One categorical draw per row by the Gumbel-max trick: argmax(logits + Gumbel noise) is
        distributed exactly as softmax(logits), and costs ~6 us where softmax + a CDF search cost ~30."""
        cfg = self.config
        if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
            kth = np.partition(logits, -cfg.top_k, axis=-1)[:, -cfg.top_k][:, None]
            logits = np.where(logits < kth, -np.inf, logits)
        if cfg.top_p < 1.0:
            probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs /= probs.sum(axis=-1, keepdims=True)
            order = np.argsort(-probs, axis=-1, kind="stable")
            sorted_p = np.take_along_axis(probs, order, axis=-1)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= cfg.top_p
            drop = np.zeros_like(drop_sorted)
            np.put_along_axis(drop, order, drop_sorted, axis=-1)
            logits = np.where(drop, -np.inf, logits)
        return (logits + self._gumbel(logits.shape)).argmax(axis=-1)

    def _gumbel(self, shape: tuple[int, ...]) -> np.ndarray:
        """Gumbel noise of `shape`, taken from a block drawn ahead: one draw and one pair of logs per
        NOISE_BLOCK values instead of per step. The generator fills a block in the order of the same values
        drawn one step at a time, so a seed gives the same text either way."""
        n = math.prod(shape)
        if self.used + n > self.noise.size:
            fresh = -np.log(-np.log(self.rng.random(max(n, NOISE_BLOCK))))
            self.noise, self.used = np.concatenate([self.noise[self.used :], fresh]), 0
        out = self.noise[self.used : self.used + n].reshape(shape)
        self.used += n
        return out
