"""The training recipe: fp32 Muon against a plain reference, the schedules, presets, and their CLI rules."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, assert_one_line_error, run_cli

FAST = [*TINY, "--batch-size", "4", "--seq-windows", "2", "--eval-iters", "2", "--quiet", "--no-report"]


def reference_muon_step(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float, wd: float) -> None:
    """Muon for one matrix, written out plainly: Nesterov momentum, Newton-Schulz in float64, RMS-matched scale."""
    buf.mul_(0.95).add_(grad, alpha=0.05)
    x = (grad * 0.05 + buf * 0.95).double()  # grad.lerp(buf, 0.95)
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(5):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    x = x.T if tall else x
    p.mul_(1 - lr * wd).add_(x.float(), alpha=-lr * 0.2 * max(p.shape) ** 0.5)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_muon_matches_the_plain_reference(workers: int) -> None:
    """On one thread, and with each same-shape stack cut in parts updated on 2 or 3 workers (an odd split)."""
    from picogpt.train.optim import Muon

    torch.manual_seed(0)
    shapes = [(96, 32), (32, 32), (96, 32), (32, 128), (32, 32), (32, 128), (96, 32)]
    params = [torch.nn.Parameter(torch.randn(s) * 0.1) for s in shapes]
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    pool = ThreadPoolExecutor(workers)
    opt = Muon(params, lr=0.01, weight_decay=0.1, executor=pool, workers=workers)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for r, g, b in zip(ref, grads, bufs):
            reference_muon_step(r, g, b, lr=0.01, wd=0.1)
    for p, r in zip(params, ref):
        assert torch.allclose(p.detach(), r, atol=2e-5), (p.detach() - r).abs().max()
    pool.shutdown()


def test_newton_schulz_orthogonalises_in_fp32() -> None:
    """The update's singular values are near 1 (Muon's point), computed without bf16."""
    from picogpt.train.optim import orthogonalize

    torch.manual_seed(0)
    u0, _ = torch.linalg.qr(torch.randn(3, 256, 64))
    v0, _ = torch.linalg.qr(torch.randn(3, 64, 64))
    g = (u0 * torch.logspace(-1, 1, 64)) @ v0.mT  # singular values from 0.1 to 10
    u = orthogonalize(g.mT.contiguous())  # [3, 64, 256]
    assert u.dtype == torch.float32 and u.shape == (3, 64, 256)
    s = torch.linalg.svdvals(u)
    assert s.min() > 0.5 and s.max() < 1.3  # a 100x spread of scales -> all directions ~1


@pytest.mark.parametrize("shape", [(4, 256, 768), (3, 1024, 256), (2, 64, 64)])
def test_the_gram_newton_schulz_is_the_reference_iteration(shape: tuple[int, int, int]) -> None:
    """The fast path (on m x m Gram matrices, for wide matrices) against the reference on the same input."""
    from picogpt.train.optim import _newton_schulz, orthogonalize

    torch.manual_seed(0)
    g = torch.randn(shape) * torch.logspace(-2, 1, shape[-1])  # columns of very different scales
    x = g.mT if shape[1] > shape[2] else g
    x = x / x.norm(dim=(-2, -1), keepdim=True)
    ref = _newton_schulz(x, 5)
    got = orthogonalize(g)
    got = got.mT if shape[1] > shape[2] else got
    assert torch.allclose(got, ref, atol=2e-4), (got - ref).abs().max()


def test_schedules() -> None:
    from picogpt.train.optim import lr_factor

    wsd = [lr_factor(s, "wsd", 10, 100, 0.1, 0.3) for s in range(101)]
    assert wsd[0] == pytest.approx(0.1) and wsd[9] == 1.0
    assert all(f == 1.0 for f in wsd[10:70])  # the stable phase
    assert all(a > b for a, b in zip(wsd[70:100], wsd[71:101]))  # the linear cooldown ...
    assert wsd[100] == 0.0  # ... ends at zero exactly at the horizon
    cos = [lr_factor(s, "cosine", 10, 100, 0.1, 0.3) for s in range(101)]
    assert cos[10] == pytest.approx(1.0) and cos[100] == pytest.approx(0.1)


def test_optimizer_groups_split_hidden_matrices_from_the_rest() -> None:
    from picogpt.config import GPTConfig
    from picogpt.model import GPT
    from picogpt.train.optim import Muon, make_optimizer

    model = GPT(GPTConfig(context_len=16, n_layer=2, n_head=2, n_embd=32))
    opt = make_optimizer(model, "muon", 1e-3, 0.1, (0.9, 0.99))
    adamw, muon = opt.optimizers
    assert isinstance(muon, Muon)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if id(p) in muon_ids} == {
        f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                    "mlp.c_proj")}
    adam_ids = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert id(named["transformer.wte.weight"]) in adam_ids  # tied to lm_head and not adam_ids & muon_ids
    assert len(adam_ids) + len(muon_ids) == len(list(model.parameters()))


def test_presets_and_auto() -> None:
    from picogpt.train.presets import AUTO_TABLE, PRESETS, preset_of, resolve_preset

    assert round(PRESETS["base"].config().num_params() / 1e6, 2) == 6.34  # the seed's model
    assert preset_of(PRESETS["pico"].config()) == "pico"
    assert preset_of(PRESETS["pico"].config(n_layer=3)) == "custom"
    for minutes, name in AUTO_TABLE:
        assert resolve_preset("auto", minutes + 0.01) == name


@pytest.mark.parametrize("args, fragment", [
    (["--model", "huge"], "unknown --model"),
    (["--model", "auto"], "--max-minutes"),
    (["--optimizer", "sgd"], "unknown --optimizer"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
])
def test_bad_recipe_flags_are_one_line_errors(args: list[str], fragment: str, corpus_file: Path,
                                              tmp_path: Path) -> None:
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(tmp_path / "o"),
                   "--max-iters", "2", *FAST, *args)
    assert_one_line_error(proc, fragment)


def test_resume_refuses_another_optimizer_and_warns_of_ignored_flags(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = ["--dataset", "text", "--data", str(corpus_file), "--out", str(out), "--eval-interval", "2", *FAST]
    assert run_cli("picogpt.train", *base, "--max-iters", "2", "--optimizer", "adamw").returncode == 0
    proc = run_cli("picogpt.train", *base, "--max-iters", "4", "--resume", "--optimizer", "muon")
    assert_one_line_error(proc, "--optimizer adamw")
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out),
                   "--max-iters", "4", "--resume", "--model", "pico", "--quiet", "--no-report")
    assert_one_line_error(proc, "--model custom")
    proc = run_cli("picogpt.train", *base, "--max-iters", "4", "--resume", "--lr", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "--lr 0.5 is ignored on --resume" in proc.stderr
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["train_config"]["optimizer"] == "adamw"


@pytest.mark.parametrize("cost", [1.0, 1.5])
def test_the_horizon_fit_prices_the_cooldown_steps(cost: float) -> None:
    """The fitted horizon spends the time left (less the 2% margin) exactly: stable steps at the measured rate,
    the last 30% at `cost` times it (a cooldown of longer sequences can cost more a step)."""
    from picogpt.train.distributed import Dist
    from picogpt.train.recipe import HorizonFitter, TrainConfig

    tc = TrainConfig(cooldown_frac=0.3, eval_interval=10)
    fitter = HorizonFitter(tc, budget_s=100.0, cap=None, cooldown_cost=cost)
    horizon = 5000
    for step in range(1, 41):  # the first fit after 3 steps (plus an eval's share), then refits; 0.1 s a step
        horizon = fitter.refit(step, horizon, 0.1 * step, Dist())
    left = (100.0 - 4.0) * 0.98
    spent = 0.1 * ((0.7 * horizon - 40) + cost * 0.3 * horizon)
    assert abs(spent - left) < 0.1 * max(1.0, cost), (horizon, spent, left)


@pytest.mark.slow
def test_time_budget_ends_on_the_cooldown(corpus_file: Path, tmp_path: Path) -> None:
    """With --max-minutes the wsd schedule is fitted so the learning rate has cooled down when time is up."""
    out = tmp_path / "timed"
    budget = 0.2 * 60
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out),
                   "--max-minutes", "0.2", "--eval-interval", "20", *FAST)
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    peak = ckpt["train_config"]["lr"]
    assert recs[-1]["step"] > 40
    assert recs[-1]["lr"] < 0.25 * peak, recs[-1]  # the cooldown ran (not cut off at full rate)
    # it ends at its fitted horizon, or at the budget; either way no later than one eval interval past it
    # (the budget is checked before every step), measured on this run's own pace
    assert recs[-1]["step"] == ckpt["horizon"] or recs[-1]["elapsed_s"] >= budget
    interval = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(recs, recs[1:]))
    assert recs[-1]["elapsed_s"] <= budget + interval, recs


@pytest.mark.parametrize("preset", ["pico", "small", "base"])
def test_every_preset_trains_exports_int8_and_runs(preset: str, corpus_file: Path, tmp_path: Path) -> None:
    """Each preset through the whole pipeline as a user runs it: train, export int8 (verified), generate."""
    out = tmp_path / preset
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out),
                   "--model", preset, "--max-iters", "3", "--eval-iters", "1", "--quiet", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert f"model: {preset} " in proc.stdout
    from picogpt.train.presets import PRESETS

    stored = torch.load(out / "ckpt.pt", weights_only=True)["train_config"]
    assert (stored["batch_size"], stored["seq_windows"]) == (PRESETS[preset].batch_size, PRESETS[preset].seq_windows)
    onnx_path = tmp_path / f"{preset}.onnx"
    proc = run_cli("picogpt.export", str(out / "ckpt.pt"), "-o", str(onnx_path), "--quantize", "int8",
                   "--data", str(corpus_file))
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("picogpt.runtime", "-m", str(onnx_path), "--prompt", "ROMEO:", "--max-new-tokens", "300",
                   "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout) >= 300


def test_the_cooldown_trades_sequences_for_windows_at_the_same_tokens() -> None:
    from picogpt.data.text import TokenData
    from picogpt.train.recipe import TrainConfig, step_shape

    tc = TrainConfig(batch_size=16, seq_windows=2, cooldown_windows=4, cooldown_frac=0.3)
    assert step_shape(tc, 69, 100) == (16, 2) and step_shape(tc, 70, 100) == (8, 4)  # the last 30% of 100 steps
    assert step_shape(TrainConfig(batch_size=16, seq_windows=2, cooldown_windows=0), 99, 100) == (16, 2)
    assert step_shape(TrainConfig(batch_size=16, seq_windows=2, cooldown_windows=4, schedule="cosine"), 99, 100) \
        == (16, 2)  # cosine has no cooldown phase
    data = TokenData(np.arange(5000) % 80, seq_len=32)
    x, y = data.batch("train", 8, np.random.default_rng(0), seq_len=64)
    assert x.shape == y.shape == (8, 64) and (y[:, :-1] == x[:, 1:]).all()


def test_the_cooldown_cost_is_timed_on_the_cooldown_s_shape_and_never_below_one() -> None:
    from picogpt.train.recipe import TrainConfig, cooldown_cost

    timed = []

    def time_step(rows: int, length: int) -> float:
        timed.append((rows, length))
        return rows * length ** 1.5  # longer sequences cost more per token (attention)

    tc = TrainConfig(batch_size=16, seq_windows=2, cooldown_windows=4)
    cost = cooldown_cost(tc, 100, 128, time_step)
    assert timed == [(16, 256), (8, 512)] and cost == pytest.approx(2 ** 0.5)
    assert cooldown_cost(TrainConfig(batch_size=16, seq_windows=2, cooldown_windows=0), 100, 128, time_step) == 1.0
    assert cooldown_cost(tc, 100, 128, lambda rows, length: float(rows)) == 1.0  # a cheaper cooldown counts as 1
