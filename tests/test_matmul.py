"""The training linears on oneDNN against torch's own matmul, on the same inputs (forward and gradients)."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_CONFIG
from picogpt.model import GPT
from picogpt.train.matmul import BlasProducts, OneDNNProducts, choose, onednn_linear, probe, use_kernel
from picogpt.train.optim import orthogonalize


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_matmul_and_its_gradients(bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 24, generator=gen, requires_grad=True)
    w = torch.randn(40, 24, generator=gen, requires_grad=True)
    b = torch.randn(40, generator=gen, requires_grad=True) if bias else None
    g = torch.randn(3, 7, 40, generator=gen)

    def grads(fn):
        y = fn()
        y.backward(g)
        out = [y.detach().clone()] + [t.grad.clone() for t in (x, w, b) if t is not None]
        for t in (x, w, b):
            if t is not None:
                t.grad = None
        return out

    ref = grads(lambda: x @ w.t() + (b if bias else 0))
    fast = grads(lambda: onednn_linear(x, w, b))
    assert len(ref) == len(fast) == (4 if bias else 3)
    for r, f in zip(ref, fast):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-5)


def test_a_model_on_onednn_trains_and_evaluates_as_on_blas() -> None:
    torch.manual_seed(0)
    ref, fast = GPT(TINY_CONFIG), GPT(TINY_CONFIG)
    fast.load_state_dict(ref.state_dict())
    use_kernel(fast, onednn_linear)
    c_fc = fast.transformer.h[0].mlp.c_fc
    assert c_fc.kernel is onednn_linear and ref.transformer.h[0].mlp.c_fc.kernel is None
    idx = torch.randint(0, TINY_CONFIG.vocab_size, (2, 3 * TINY_CONFIG.context_len))
    tgt = torch.randint(0, TINY_CONFIG.vocab_size, idx.shape)
    losses = []
    for model in (ref, fast):
        _, loss = model(idx, tgt)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    with torch.inference_mode():  # evaluation runs the same kernel without a graph
        assert fast(idx, tgt)[1].item() == pytest.approx(losses[0], abs=1e-5)
    use_kernel(fast, None)
    assert c_fc.kernel is None


def test_the_choice_says_why() -> None:
    times = probe(TINY_CONFIG, 64)
    assert times is not None and all(t > 0 for t in times)
    linear, products, why = choose("auto", TINY_CONFIG, 64)
    assert (linear is onednn_linear) == (products is OneDNNProducts) == why.startswith("oneDNN") and "x" in why
    assert choose("blas", TINY_CONFIG, 64) == (None, BlasProducts, "BLAS (--matmul blas)")
    assert choose("onednn", TINY_CONFIG, 64)[:2] == (onednn_linear, OneDNNProducts)


@pytest.mark.parametrize("shape", [(3, 24, 96), (2, 40, 40), (2, 64, 24)])  # Gram path, reference path, tall
def test_newton_schulz_on_onednn_matches_blas(shape: tuple[int, int, int]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    ref = orthogonalize(g, products=BlasProducts)
    torch.testing.assert_close(orthogonalize(g, products=OneDNNProducts), ref, rtol=1e-4, atol=1e-5)
