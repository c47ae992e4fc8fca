"""Training's fp32 matmuls on oneDNN, when it is the faster of the two libraries torch carries.

torch multiplies fp32 matrices with MKL. MKL picks its kernels by CPU vendor: on a CPU that is not Intel's
it runs generic code, which on an AMD Zen 5 reaches less than half of what oneDNN, also inside torch, reaches
there (oneDNN picks kernels by the instructions the CPU has). Training times both on the model's largest
linear (one worker's rows) before the first step and keeps the faster for the blocks' linears and Muon's
Newton-Schulz products, so a CPU where MKL is fast loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.model import Linear

KERNELS = ("auto", "blas", "onednn")
PROBE_ROWS = 4096  # enough rows to time the steady-state kernels; a big batch's probe stays a fraction of a second
_pointwise = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def onednn_mm_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b^T (+ bias) with oneDNN: a [..., K], b [N, K] (any strides)."""
    return _pointwise(a, b, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b, its backward's two products on oneDNN too (each is an `a @ b^T` of existing views)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_mm_t(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g2, x2 = grad.reshape(-1, grad.size(-1)), x.reshape(-1, x.size(-1))
        gx = onednn_mm_t(grad, weight.t()) if ctx.needs_input_grad[0] else None
        gw = onednn_mm_t(g2.t(), x2.t()) if ctx.needs_input_grad[1] else None
        return gx, gw, g2.sum(0) if ctx.has_bias else None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return OneDNNLinear.apply(x, weight, bias)


class BlasProducts:
    """Muon's products on stacks [k, m, n]: `mt(a, b)` = a @ b^T, `addmt(c, a, b, beta, alpha)` = beta c +
    alpha a @ b^T (one fused call on BLAS)."""

    @staticmethod
    def mt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b.mT

    @staticmethod
    def addmt(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float = 1.0) -> torch.Tensor:
        return torch.baddbmm(c, a, b.mT, beta=beta, alpha=alpha)


class OneDNNProducts:
    """The same products, one oneDNN call per matrix of the stack."""

    @staticmethod
    def mt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.stack([onednn_mm_t(x, y) for x, y in zip(a, b)])

    @classmethod
    def addmt(cls, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float = 1.0) -> torch.Tensor:
        return cls.mt(a, b).mul_(alpha).add_(c, alpha=beta)


def _best_seconds(fn: Callable[[], torch.Tensor], budget: float = 0.03) -> float:
    fn()
    best, spent = float("inf"), 0.0
    while spent < budget:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return best


def probe(config: GPTConfig, rows: int) -> tuple[float, float] | None:
    """(MKL's, oneDNN's) seconds for one MLP-sized product of `rows` rows (at most PROBE_ROWS), best of a few;
    None when this torch has no oneDNN linear or it disagrees with MKL."""
    if _pointwise is None:
        return None
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(min(rows, PROBE_ROWS), config.n_embd, generator=gen)
    w = torch.randn(4 * config.n_embd, config.n_embd, generator=gen)
    try:
        fast = onednn_mm_t(x, w)
    except RuntimeError:
        return None
    if not torch.allclose(fast, x @ w.t(), rtol=1e-4, atol=1e-3):
        return None
    blas, dnn = [], []
    for _ in range(3):  # interleaved: a slow moment of the machine hits both
        blas.append(_best_seconds(lambda: x @ w.t()))
        dnn.append(_best_seconds(lambda: onednn_mm_t(x, w)))
    return min(blas), min(dnn)


class Choice(NamedTuple):
    linear: Callable | None  # the linears' kernel (None: torch's matmul)
    products: type  # Muon's Newton-Schulz products
    why: str


def choose(kernel: str, config: GPTConfig, rows: int) -> Choice:
    """The library for training's matmuls, and a few words on why."""
    if kernel == "blas":
        return Choice(None, BlasProducts, "BLAS (--matmul blas)")
    times = probe(config, rows)
    if times is None:
        if kernel == "onednn":
            raise PicoError("--matmul onednn: this torch has no usable oneDNN linear (use --matmul auto)")
        return Choice(None, BlasProducts, "BLAS (no oneDNN linear in this torch)")
    speed = times[0] / times[1]
    if kernel == "onednn":
        return Choice(onednn_linear, OneDNNProducts, f"oneDNN (--matmul onednn; {speed:.2f}x BLAS's speed here)")
    if speed > 1.1:  # a clear win only: the two are equal on many CPUs
        return Choice(onednn_linear, OneDNNProducts, f"oneDNN ({speed:.2f}x BLAS's speed here)")
    return Choice(None, BlasProducts, f"BLAS (oneDNN {speed:.2f}x its speed here)")


def use_kernel(model: torch.nn.Module, kernel: Callable | None) -> None:
    """Every block linear of `model` computes with `kernel`; None restores torch's matmul."""
    for m in model.modules():
        if isinstance(m, Linear):
            m.kernel = kernel
