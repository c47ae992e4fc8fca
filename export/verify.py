"""Parity of an exported file against the torch model it came from (llama2.c style: the
reference and the fast implementation run on the same inputs and are compared)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from picogpt.generation import greedy_ids
from picogpt.model import GPT, TorchDecoder
from picogpt.runtime.decoder import OnnxDecoder

FP32_MAX_LOGIT_DIFF = 1e-4


@dataclass
class Parity:
    """How one .onnx file compares with torch on the same ids."""

    name: str
    max_abs_logit: float
    top1_agreement: float
    greedy_equal: int  # leading greedy characters identical to torch's
    greedy_len: int
    val_loss_torch: float | None
    val_loss_onnx: float | None
    ms_per_step: float | None = None
    size_mb: float = 0.0

    @property
    def val_loss_delta(self) -> float | None:
        if self.val_loss_onnx is None or self.val_loss_torch is None:
            return None
        return self.val_loss_onnx - self.val_loss_torch

    @property
    def fp32_ok(self) -> bool:
        return self.max_abs_logit <= FP32_MAX_LOGIT_DIFF and self.greedy_equal == self.greedy_len


def onnx_logits(decoder: OnnxDecoder, ids: np.ndarray) -> np.ndarray:
    """Teacher-forced logits [B, N, V] from the ONNX graph, one cached step per position."""
    state = decoder.new_state(ids.shape[0])
    return np.stack([decoder.feed(ids[:, t : t + 1], state) for t in range(ids.shape[1])], axis=1)


def mean_ce(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(F.cross_entropy(torch.from_numpy(logits).reshape(-1, logits.shape[-1]).float(),
                                 torch.from_numpy(targets).reshape(-1)))


def time_step(decoder: OnnxDecoder, past: int, repeats: int = 200) -> float:
    """Median ms of one single-token `feed` (batch 1) onto `past` cached rows, slot included."""
    state = decoder.new_state(1)
    decoder.feed(np.full((1, past - 1), 5, dtype=np.int64), state)  # the slot plus past-1 characters
    token = np.array([[5]], dtype=np.int64)
    times = []
    for i in range(repeats + 10):
        t = time.perf_counter()
        decoder.feed(token, state)
        if i >= 10:  # warm-up
            times.append(time.perf_counter() - t)
        decoder.rewind(state, past)
    return float(np.median(times) * 1000)


@torch.inference_mode()
def compare(model: GPT, path: Path, name: str, ids: np.ndarray, real_text: bool, prompt_ids: list[int],
            greedy_len: int, threads: int | None = 1) -> Parity:
    """Compare `path` with `model` on ids [B, N+1] (inputs and next-char targets) and a greedy run."""
    decoder = OnnxDecoder(path, threads=threads)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    ref, _ = model(torch.from_numpy(inputs), overlap=decoder.overlap)
    ref = ref.numpy()
    got = onnx_logits(decoder, inputs)
    agree = float((ref.argmax(-1) == got.argmax(-1)).mean())
    torch_text = greedy_ids(TorchDecoder(model, decoder.overlap), prompt_ids, greedy_len)
    onnx_text = greedy_ids(decoder, prompt_ids, greedy_len)
    same = next((i for i, (a, b) in enumerate(zip(torch_text, onnx_text)) if a != b), greedy_len)
    return Parity(
        name=name, max_abs_logit=float(np.abs(ref - got).max()), top1_agreement=agree, greedy_equal=same,
        greedy_len=greedy_len, val_loss_torch=mean_ce(ref, targets) if real_text else None,
        val_loss_onnx=mean_ce(got, targets) if real_text else None, size_mb=path.stat().st_size / 1e6,
    )


# `--quantize auto` keeps the fastest file within this many nats of torch's val loss.
AUTO_MAX_NATS = 0.02


def choose_auto(results: dict[str, Parity]) -> str:
    """The fastest quantized file within AUTO_MAX_NATS of torch (without val text: >= 98% top-1), else "none"."""
    ok = [r for n, r in results.items() if n != "none" and r.val_loss_delta is not None
          and r.val_loss_delta <= AUTO_MAX_NATS]
    if not ok:
        ok = [r for n, r in results.items() if n != "none" and r.top1_agreement >= 0.98]
    return min(ok, key=lambda r: r.ms_per_step or 0).name if ok else "none"


def format_table(rows: list[Parity]) -> str:
    head = f"{'file':<13}{'size MB':>8}{'max|dlogit|':>13}{'top-1 agree':>12}{'greedy same':>13}" \
           f"{'val loss':>10}{'d nats':>9}{'ms/step':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        vl = "n/a" if r.val_loss_onnx is None else f"{r.val_loss_onnx:.4f}"
        dn = "n/a" if r.val_loss_delta is None else f"{r.val_loss_delta:+.4f}"
        ms = "" if r.ms_per_step is None else f"{r.ms_per_step:.3f}"
        lines.append(f"{r.name:<13}{r.size_mb:>8.2f}{r.max_abs_logit:>13.2e}{r.top1_agreement:>11.2%}"
                     f"{f'{r.greedy_equal}/{r.greedy_len}':>13}{vl:>10}{dn:>9}{ms:>9}")
    return "\n".join(lines)
