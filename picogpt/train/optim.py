"""Optimizers and learning-rate schedules for `picogpt-train` (fp32 only).

Two optimizers, chosen with `--optimizer`:
  * `adamw`: nanoGPT's AdamW (matrices and embeddings decay, biases and LayerNorm gains do not);
  * `muon`:  Muon (orthogonalised momentum) for the hidden 2-D matrices of the blocks, AdamW for
             the embedding/head, biases and gains. torch 2.13's `torch.optim.Muon` runs its
             Newton-Schulz iterations in bf16, which old CPUs lack: ours runs them in fp32, batched
             over the layers' same-shaped matrices and split over the training workers' cores.

Muon's update is rescaled to AdamW's typical RMS (0.2 * sqrt(max(rows, cols)), the "match RMS"
rule of Moonlight), so both groups share one `--lr` and one weight decay.

Two schedules, chosen with `--schedule`, both a factor of `--lr` after a linear warmup:
  * `cosine`: decay to `min_lr_ratio` at the horizon (nanoGPT);
  * `wsd`:    warmup, a long stable phase, then a linear cooldown to zero over the last
              `cooldown_frac` of the steps, ending at the horizon (which a time budget fits to the minutes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor

import torch

from picogpt.train.matmul import BlasProducts

# Quintic Newton-Schulz coefficients (Keller Jordan's Muon): pushes singular values towards ~1 in 5 steps.
NS_COEFFS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
OPTIMIZERS = ("muon", "adamw")


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS, products: type = BlasProducts) -> torch.Tensor:
    """Approximate U V^T of each matrix of a [k, m, n] stack by Newton-Schulz, in fp32."""
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X X^T is then the smaller Gram matrix
        x = x.mT
    # A wide matrix (n >= 2m: the QKV and MLP matrices, 3m and 4m) iterates on its m x m Gram matrix only.
    if x.size(-1) >= 2 * x.size(-2):
        out = _newton_schulz_gram(x, steps, products)
    else:
        out = _newton_schulz(x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7), steps, products)
    return out.mT if tall else out


def _newton_schulz(x: torch.Tensor, steps: int, products: type = BlasProducts) -> torch.Tensor:
    """The reference iteration on X [k, m, n]: 2 m^2 n + m^3 multiply-adds a step. (G and the polynomial
    are symmetric, so G G = G G^T and P X = P (X^T)^T: every product is an a @ b^T.)"""
    a, b, c = NS_COEFFS
    mt, addmt = products.mt, products.addmt
    for _ in range(steps):
        gram = mt(x, x)
        poly = addmt(gram, gram, gram, beta=b, alpha=c)  # b*G + c*G@G
        x = addmt(x, poly, x.mT, beta=a)  # a*X + poly@X
    return x


def _newton_schulz_gram(x: torch.Tensor, steps: int, products: type = BlasProducts) -> torch.Tensor:
    """The same iteration, on X scaled to unit norm, written on m x m matrices: X_k = Q_k X_0, so
    X_k X_k^T = Q_k G Q_k^T with G = X_0 X_0^T and Q_{k+1} = a Q_k + p(Q_k G Q_k^T) Q_k. 4 m^3 a step (the
    first, with Q = I, m^3) plus 2 m^2 n once: for the 256 x 1024 MLP matrices a third of the reference's work."""
    a, b, c = NS_COEFFS
    mt, addmt = products.mt, products.addmt
    g0 = mt(x, x)
    # X is normalised to unit Frobenius norm through G (whose trace is its square): m x m work, not a pass over X.
    norm = g0.diagonal(dim1=-2, dim2=-1).sum(-1).sqrt()[..., None, None] + 1e-7
    g0 = g0 / norm**2
    q = None
    for _ in range(steps):
        gram = g0 if q is None else mt(mt(q, g0), q)  # Q G Q^T (G symmetric)
        poly = addmt(gram, gram, gram, beta=b, alpha=c)  # b*A + c*A@A
        q = poly + a * torch.eye(g0.size(-1), dtype=g0.dtype) if q is None else addmt(q, poly, q.mT, beta=a)
    return mt(q / norm, x.mT)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised per matrix, with decoupled weight decay (fp32).

    Parameters of the same shape are stacked so each Newton-Schulz step is one batched matmul. With an
    `executor`, every stack is cut in `workers` parts and each part's whole update (momentum, Newton-Schulz,
    weight update) runs on one of the training workers' threads: both cores share all of it, the memory-bound
    momentum and weight passes included, which is faster than splitting only Newton-Schulz (docs/design.md).
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0,
                 executor: Executor | None = None, workers: int = 1, products: type = BlasProducts) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.executor, self.workers, self.products = executor, workers, products

    @torch.no_grad()  # grad mode is per thread: the workers need it too
    def _update(self, params: list[torch.Tensor], group: dict) -> None:
        """One part of a same-shape stack: Nesterov momentum, Newton-Schulz, then the decayed weight update."""
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
        x = torch.empty((len(params), *params[0].shape), dtype=params[0].dtype)
        for g, buf, row in zip(grads, bufs, x):  # Nesterov, written straight into the stack
            torch.lerp(g, buf, group["momentum"], out=row)
        u = orthogonalize(x, products=self.products)
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_add_(params, list(u.unbind(0)), alpha=-group["lr"] * 0.2 * math.sqrt(max(x.shape[1:])))

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        jobs = []
        for group in self.param_groups:
            by_shape: dict[torch.Size, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))  # here, not in a worker
                    by_shape.setdefault(p.shape, []).append(p)
            for params in by_shape.values():
                parts = min(self.workers, len(params)) if self.executor is not None else 1
                jobs += [(params[i::parts], group) for i in range(parts)]
        if self.executor is not None and len(jobs) > 1:
            list(self.executor.map(lambda job: self._update(*job), jobs))
        else:
            for job in jobs:
                self._update(*job)


class Optimizers:
    """One or two torch optimizers stepped together (the checkpoint stores their states as a list)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def set_lr(self, lr: float) -> None:
        for g in self.param_groups:
            g["lr"] = lr

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        states = state["optimizers"] if "optimizers" in state else [state]  # older checkpoints: one AdamW
        if len(states) != len(self.optimizers):
            raise ValueError("optimizer state does not match the optimizer")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                   executor: Executor | None = None, workers: int = 1, products: type = BlasProducts) -> Optimizers:
    """`adamw` or `muon` over the model's parameters (see the module docstring for the split)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # Muon takes the hidden matrices of the blocks; the tied embedding/head is not a hidden matrix.
    hidden = [p for n, p in params if p.dim() == 2 and ".h." in f".{n}"] if name == "muon" else []
    hidden_ids = {id(p) for p in hidden}
    decay = [p for _, p in params if p.dim() >= 2 and id(p) not in hidden_ids]
    no_decay = [p for _, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused CPU kernel updates every AdamW parameter in one pass (faster than foreach on CPU).
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)]
    if hidden:
        optimizers.append(Muon(hidden, lr=lr, weight_decay=weight_decay, executor=executor, workers=workers,
                               products=products))
    return Optimizers(optimizers)


def lr_factor(step: int, schedule: str, warmup: int, horizon: int, min_ratio: float, cooldown_frac: float) -> float:
    """Multiplier of the peak learning rate at `step` (0-based) for a run of `horizon` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        cooldown = max(1, int(round(cooldown_frac * horizon)))
        start = max(warmup, horizon - cooldown)
        if step < start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / max(1, horizon - start))
    progress = min(1.0, (step - warmup) / max(1, horizon - warmup))
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)
