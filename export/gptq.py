"""GPTQ: calibrated rounding for the block-quantized (MatMulNBits) weights.

Round-to-nearest int4 (onnxruntime's MatMulNBitsQuantizer) moves each weight to its nearest code
on its own. GPTQ (Frantar et al., 2022) rounds the input columns of a linear one at a time and
pushes each rounding error onto the columns not yet rounded, weighted by the inverse Hessian
of the layer's inputs (H = X^T X over calibration text), so the *output* X W^T moves as little
as possible. The codes keep MatMulNBits' own format: blocks of 32 along K, one scale and zero
point per block, `(code - zero_point) * scale`. `rtn_codes` is the round-to-nearest reference,
bit-identical to onnxruntime's packing (a test checks it).

Two choices measured on the pretrained model (docs/onnx.md): static groups with act-order (the
block grids come from the original weights, columns are rounded by decreasing H diagonal) and
an 8-bit lm_head, whose error lands directly on the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

BLOCK = 32
LAZY_COLUMNS = 128  # columns rounded before the trailing ones are updated with one matmul


@dataclass
class BlockCodes:
    """A [N, K] weight as MatMulNBits codes: blocks of `block` along K."""

    codes: np.ndarray  # uint8 [N, K_padded], 0 .. 2**bits - 1
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray  # uint8 [N, n_blocks]
    bits: int
    block: int = BLOCK

    def dequantize(self) -> np.ndarray:
        """float32 [N, K_padded]: what the kernel multiplies with."""
        n, nb = self.scales.shape
        q = self.codes.reshape(n, nb, self.block).astype(np.float32)
        return ((q - self.zero_points[..., None]) * self.scales[..., None]).reshape(n, -1)

    def packed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B [N, n_blocks, block*bits/8], scales [N, n_blocks], zero_points) in MatMulNBits layout:
        codes low nibble first along K; 4-bit zero points two per byte, an odd count padded with 8."""
        n, nb = self.scales.shape
        if self.bits == 8:
            return self.codes.reshape(n, nb, self.block), self.scales, self.zero_points
        pairs = self.codes.reshape(n, nb, self.block // 2, 2)
        b = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
        z = np.pad(self.zero_points, ((0, 0), (0, nb % 2)), constant_values=8)  # onnxruntime's filler
        return b, self.scales, (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)


def block_grid(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of `w` [N, block], as MLAS computes them (in float32): the
    range always contains 0, scale = range / (2**bits - 1), zero point rounded into the code range."""
    top = 2**bits - 1
    w = w.float()
    lo, hi = w.min(1).values.clamp(max=0), w.max(1).values.clamp(min=0)
    scale = (hi - lo) / top
    zero = torch.where(scale > 0, (-lo / scale.clamp(min=1e-30)).round().clamp(0, top), torch.zeros_like(lo))
    return scale.double(), zero.double()


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, dequantized values) of `w` on the given grid."""
    q = (w / torch.where(scale > 0, scale, 1)).round().add(zero).clamp(0, 2**bits - 1)
    return q, (q - zero) * scale


def _padded(weight: torch.Tensor, block: int) -> torch.Tensor:
    return nn.functional.pad(weight.double(), (0, -weight.shape[1] % block))


def _grids(w: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, n_blocks] scales and zero points of every block of `w` [N, K_padded]."""
    grids = [block_grid(w[:, k : k + block], bits) for k in range(0, w.shape[1], block)]
    return torch.stack([s for s, _ in grids], 1), torch.stack([z for _, z in grids], 1)


def _codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, block: int) -> BlockCodes:
    return BlockCodes(q.to(torch.uint8).numpy(), scale.float().numpy(), zero.to(torch.uint8).numpy(), bits, block)


def rtn_codes(weight: torch.Tensor, bits: int = 4, block: int = BLOCK) -> BlockCodes:
    """Round-to-nearest codes of `weight` [N, K]: the reference (what onnxruntime writes)."""
    w = _padded(weight, block)
    scale, zero = _grids(w, bits, block)
    n, k = w.shape
    q, _ = _round(w.reshape(n, -1, block), scale[..., None], zero[..., None], bits)
    return _codes(q.reshape(n, k), scale, zero, bits, block)


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, block: int = BLOCK,
               damp: float = 0.01) -> BlockCodes:
    """GPTQ codes of `weight` [N, K] given its inputs' `hessian` [K, K] (sum of x x^T)."""
    w = _padded(weight, block)
    n, k = w.shape
    h = torch.eye(k, dtype=torch.float64)
    h[: weight.shape[1], : weight.shape[1]] = hessian.double()
    dead = h.diagonal() == 0  # inputs the calibration never moved: their weights cannot matter
    h[dead, dead] = 1
    w[:, dead] = 0
    # Static groups: every block's grid is fixed from the original weights, so the columns can be
    # rounded in any order. Act-order rounds the most-used inputs first, while many columns are
    # still unrounded and can absorb their error.
    scale, zero = _grids(w, bits, block)
    order = torch.argsort(h.diagonal(), descending=True)
    w, h = w[:, order], h[order][:, order]
    h += damp * h.diagonal().mean() * torch.eye(k, dtype=torch.float64)
    # Upper Cholesky factor of H^-1: row i holds how column i's error spreads over later columns.
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    group = order // block
    for i0 in range(0, k, LAZY_COLUMNS):
        i1 = min(i0 + LAZY_COLUMNS, k)
        part, errors = w[:, i0:i1].clone(), torch.zeros(n, i1 - i0, dtype=torch.float64)
        for j in range(i1 - i0):
            g = group[i0 + j]
            q[:, i0 + j], rounded = _round(part[:, j], scale[:, g], zero[:, g], bits)
            errors[:, j] = (part[:, j] - rounded) / u[i0 + j, i0 + j]
            part[:, j:] -= errors[:, j : j + 1] * u[i0 + j, i0 + j : i1]
        w[:, i1:] -= errors @ u[i0:i1, i1:]
    return _codes(q[:, torch.argsort(order)], scale, zero, bits, block)


@torch.inference_mode()
def input_hessians(model: nn.Module, calibration: np.ndarray, batch: int = 16) -> dict[str, torch.Tensor]:
    """{linear name: sum of x x^T over its inputs} while `model` reads `calibration` [B, T] ids."""
    sums: dict[str, torch.Tensor] = {}
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}

    def hook(name: str):
        def add(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x.T @ x).double()  # fp32 product: 20x faster, ample here
        return add

    handles = [m.register_forward_hook(hook(name)) for name, m in linears.items()]
    try:
        for b in range(0, len(calibration), batch):
            model(torch.from_numpy(calibration[b : b + batch]))
    finally:
        for handle in handles:
            handle.remove()
    return sums


def gptq_model(model: nn.Module, calibration: np.ndarray, bits: int = 4,
               head_bits: int = 8) -> list[tuple[np.ndarray, BlockCodes]]:
    """(fp32 weight [N, K], its codes) for every linear of `model`; `lm_head` gets `head_bits`."""
    hessians = input_hessians(model, calibration)
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            weight = module.weight.detach()
            codes = gptq_codes(weight, hessians[name], head_bits if name == "lm_head" else bits)
            out.append((weight.float().numpy(), codes))
    return out
