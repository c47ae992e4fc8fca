"""The three entry points agree: window forward = sequence forward = cached decode (random weights)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from conftest import random_gpt
from picogpt.config import GPTConfig
from picogpt.model import GPT, causal_mask
from picogpt.sampling import SamplingConfig

CFG = GPTConfig(context_len=8, n_layer=2, n_head=2, n_embd=16)
N = 3 * 8 + 5  # three full windows and a partial fourth


@pytest.fixture()
def model() -> GPT:
    return random_gpt(CFG, 0.1)


def reference_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Window by window by hand, with the context vector computed as the spec says."""
    ctx = torch.zeros(idx.size(0), CFG.n_embd)
    out = []
    for s in range(0, idx.size(1), CFG.context_len):
        logits, hidden = model.forward_window(idx[:, s : s + CFG.context_len], ctx)
        out.append(logits)
        ctx = hidden.mean(dim=1)  # slot included
    return torch.cat(out, dim=1)


@torch.no_grad()
def test_window_sequence_decode_agree(model: GPT) -> None:
    idx = torch.randint(0, CFG.vocab_size, (2, N))
    ref = reference_logits(model, idx)
    seq, _ = model(idx)
    assert torch.allclose(seq, ref, atol=1e-5)
    state = model.new_state(2)
    steps = []
    for t in range(N):
        logits, state = model.decode(idx[:, t : t + 1], state)
        steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), ref, atol=1e-5)


@torch.no_grad()
def test_chunked_prefill_crossing_windows(model: GPT) -> None:
    idx = torch.randint(0, CFG.vocab_size, (1, N))
    ref = reference_logits(model, idx)
    state = model.new_state(1)
    pos = 0
    for chunk in (5, 7, 1, 11, 5):  # chunks straddle window boundaries
        logits, state = model.decode(idx[:, pos : pos + chunk], state)
        pos += chunk
        assert torch.allclose(logits, ref[:, pos - 1], atol=1e-5)


def test_context_vector_matters(model: GPT) -> None:
    idx = torch.randint(0, CFG.vocab_size, (1, 2 * CFG.context_len))
    with torch.no_grad():
        carried = torch.cat([w for w, _ in model.iter_windows(idx)], 1)
        zeroed = torch.cat([w for w, _ in model.iter_windows(idx, carry=False)], 1)
    n = CFG.context_len
    assert torch.allclose(carried[:, :n], zeroed[:, :n])  # first window: zeros either way
    assert not torch.allclose(carried[:, n:], zeroed[:, n:])


def test_loss_counts_every_target_once(model: GPT) -> None:
    idx = torch.randint(0, CFG.vocab_size, (3, N))
    tgt = torch.randint(0, CFG.vocab_size, (3, N))
    logits, loss = model(idx, tgt)
    manual = F.cross_entropy(reference_logits(model, idx).reshape(-1, CFG.vocab_size), tgt.reshape(-1))
    assert logits.shape == (3, N, CFG.vocab_size)
    assert torch.allclose(loss, manual, atol=1e-6)


def test_gradients_flow_through_the_chain(model: GPT) -> None:
    idx = torch.randint(0, CFG.vocab_size, (1, 3 * CFG.context_len))
    tgt = torch.randint(0, CFG.vocab_size, (1, 3 * CFG.context_len))
    model.train()
    # only the last window's loss: its gradient reaches window 1's inputs solely through the slots
    logits, _ = model(idx, tgt)
    loss = F.cross_entropy(logits[0, -CFG.context_len :], tgt[0, -CFG.context_len :])
    emb = model.transformer.wte.weight
    grad = torch.autograd.grad(loss, emb)[0]
    first_window_only = set(idx[0, : CFG.context_len].tolist()) - set(idx[0, CFG.context_len :].tolist())
    assert first_window_only, "test needs a token that appears only in the first window"
    assert any(grad[t].abs().sum() > 0 for t in first_window_only)


def test_mask_is_bottom_right_aligned() -> None:
    m = causal_mask(2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4), torch.tril(torch.ones(4, 4, dtype=torch.bool)))


@torch.no_grad()
def test_generate_greedy_matches_recompute(model: GPT) -> None:
    prompt = torch.randint(0, CFG.vocab_size, (1, 6)).tolist()[0]
    new = model.generate(prompt, 3 * CFG.context_len, SamplingConfig(temperature=0))[0]
    text = list(prompt)
    for _ in range(3 * CFG.context_len):  # the slow way: recompute the whole text each token
        logits, _ = model(torch.tensor([text]))
        text.append(int(logits[0, -1].argmax()))
    assert new == text[len(prompt) :]


def test_generate_batch_and_seed() -> None:
    torch.manual_seed(1)
    m = GPT(CFG).eval()
    a = m.generate([[1, 2, 3], [4, 5, 6]], 20, SamplingConfig(temperature=1.0), seed=5)
    b = m.generate([[1, 2, 3], [4, 5, 6]], 20, SamplingConfig(temperature=1.0), seed=5)
    assert a == b and len(a) == 2 and all(len(r) == 20 for r in a)


def test_nanogpt_parameter_names() -> None:
    names = set(GPT(CFG).state_dict())
    for expected in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.attn.c_attn.weight",
                     "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"):
        assert expected in names
    m = GPT(CFG)
    assert m.lm_head.weight is m.transformer.wte.weight
    assert m.transformer.wpe.weight.shape == (CFG.context_len + 1, CFG.n_embd)


@pytest.mark.parametrize("bias", [True, False])
def test_the_config_counts_the_model_s_parameters(bias: bool) -> None:
    cfg = GPTConfig(context_len=8, n_layer=2, n_head=2, n_embd=16, bias=bias)
    m = GPT(cfg)
    total = sum(p.numel() for p in m.parameters())  # the tied head is counted once
    assert cfg.num_params(include_positions=True) == total
    assert cfg.num_params() == total - m.transformer.wpe.weight.numel()  # nanoGPT's figure leaves positions out
