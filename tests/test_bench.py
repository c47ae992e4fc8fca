"""`picogpt-bench` driven from the command line on a tiny checkpoint (behaviour, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from picogpt.bench import system_info
from picogpt.windows import window_spans


def test_quick_bench_reports_every_engine(tiny_ckpt: Path, tmp_path: Path) -> None:
    js, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    proc = run_cli("picogpt.bench", str(tiny_ckpt), "--quick", "--json", str(js), "--markdown", str(md),
                   "--plot", str(png), "--cores", "0")
    assert proc.returncode == 0, proc.stderr
    assert "[INFO]" not in proc.stderr  # exporting the int4 engine's file is quiet
    result = json.loads(js.read_text())
    assert result["benchmark"] == "latency" and result["machine"]["cpu"] and result["versions"]["onnxruntime"]
    wanted = f"picogpt-bench {tiny_ckpt} --quick --json {js} --markdown {md} --plot {png} --cores 0"
    assert result["command"].endswith(wanted)
    engines = {r["engine"] for r in result["rows"]}
    assert engines == {"torch-naive", "torch-kv", "ort-fp32", "ort-int8", "ort-int4"}
    for r in result["rows"]:
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 10
        assert r["floor_ms"] > 0 and r["bound"].split()[0] in ("memory", "compute")  # and the level or arithmetic
    naive = next(r for r in result["rows"] if r["engine"] == "torch-naive")
    kv = next(r for r in result["rows"] if r["engine"] == "torch-kv")
    assert naive["p50_ms"] > kv["p50_ms"]  # recomputing 10 windows per token costs more than one cached step
    assert result["roofline"]["bandwidth_gbs"] > 0 and result["roofline"]["gemm_gflops"] > 0
    assert "| engine |" in md.read_text() and "CPU:" in proc.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_onnx_only(exported: Path, tmp_path: Path) -> None:
    js = tmp_path / "b.json"
    proc = run_cli("picogpt.bench", "--onnx", str(exported), "--quick", "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(js.read_text())["rows"]
    assert [r["engine"] for r in rows] == ["ort-fp32"] and rows[0]["x_torch-kv"] is None
    # 300 tokens of the tiny model (windows of 16) roll over many times, each re-reading the file's overlap
    assert rows[0]["overlap"] == 4 and 0 < rows[0]["overlap_share"] < 1


def test_bench_bad_inputs(tmp_path: Path, exported: Path) -> None:
    assert_one_line_error(run_cli("picogpt.bench", str(tmp_path / "missing.pt")), "not found")
    assert_one_line_error(run_cli("picogpt.bench", "--onnx", str(exported), "--threads", "0"), "--threads")
    assert_one_line_error(run_cli("picogpt.bench", "--onnx", str(exported), "--cores", "0,999"), "do not exist")
    assert_one_line_error(run_cli("picogpt.bench"), "checkpoint")


@pytest.mark.slow
def test_quality_bench_trains_scores_and_plots(corpus_file: Path, tmp_path: Path) -> None:
    """`picogpt-bench quality` as a user runs it: a short budget, one preset, the full val split scored."""
    js, md, png = tmp_path / "q.json", tmp_path / "q.md", tmp_path / "q.png"
    proc = run_cli("picogpt.bench", "quality", "--minutes", "0.05", "--recipes", "picogpt", "--presets", "pico",
                   "--data", str(corpus_file), "--out", str(tmp_path / "runs"), "--json", str(js), "--markdown",
                   str(md), "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(js.read_text())["rows"]
    assert row["recipe"] == "picogpt" and row["preset"] == "pico" and row["steps"] > 0
    val_chars = int(len(corpus_file.read_text()) * 0.1)  # the last 10%, as picogpt-train splits text
    assert row["targets"] == val_chars - 1  # every character of the val split after the first is scored
    assert row["overlap"] == 32 and 0 < row["plain"] < 5  # scored as a new window re-reads 32 characters, and plain
    windows = len(list(window_spans(32 + 1280, 128, 32)))  # 1,280 targets after the 32 before them
    assert 0 < row["val_loss"] < 5 and 0 < row["zeroed"] < 5 and len(row["per_window"]) == windows == 14
    assert "| 0.05 | picogpt | pico |" in md.read_text() and png.read_bytes()[:4] == b"\x89PNG"
    gains = [z - c for c, z in zip(row["per_window"][1:], row["per_window_zeroed"][1:])]
    worst = min(range(len(gains)), key=gains.__getitem__)  # by how much the worst window gains, and its noise
    least = f"{gains[worst]:+.5f} ± {row['per_window_gain_se'][worst + 1]:.5f}"
    assert md.read_text().splitlines()[-1].endswith(f"| {least} |")


def test_quality_bench_scores_an_onnx_file_as_torch_scores_its_model(random_model, exported: Path,
                                                                     corpus_file: Path, tmp_path: Path) -> None:
    """The runtime scorer (`--onnx`) and the torch scorer stream the same text the same way: same loss."""
    from picogpt.data.text import load_token_data
    from picogpt.tokenizer import CharTokenizer
    from picogpt.train.evaluate import stream_score

    js = tmp_path / "q.json"
    proc = run_cli("picogpt.bench", "quality", "--onnx", str(exported), "--data", str(corpus_file), "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(js.read_text())["rows"]
    got = row["val_loss"]
    val = load_token_data(str(corpus_file), CharTokenizer(), 1280, "t")[0].val
    assert row["overlap"] == 4 and got == pytest.approx(stream_score(random_model, val, 1280, overlap=4).mean, abs=1e-4)
    assert row["plain"] == pytest.approx(stream_score(random_model, val, 1280).mean, abs=1e-4)


def test_train_speed_compares_optimizers_and_times_newton_schulz(tmp_path: Path) -> None:
    """`python -m picogpt.bench.train_speed` as the docs run it (short): each engine in its own process."""
    js = tmp_path / "speed.json"
    proc = run_cli("picogpt.bench.train_speed", "--engines", "picogpt,picogpt-muon", "--rounds", "2", "--model",
                   "pico", "--batch-size", "2", "--seq-windows", "2", "--tokens", "1000", "--threads", "1",
                   "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    *_, cost_line, median = proc.stdout.strip().splitlines()
    assert median.startswith("median tok/s, pico, batch 2 x 2 windows, 1 threads: picogpt ")
    # Muon's cost is the medians' ratio, and it lies within the rounds' own costs
    result = json.loads(js.read_text())
    by = {row["engine"]: row for row in result["rows"]}
    assert [len(by[e]["rounds_tok_s"]) for e in ("picogpt", "picogpt-muon")] == [2, 2]
    cost = 100 * (1 - by["picogpt-muon"]["median_tok_s"] / by["picogpt"]["median_tok_s"])
    assert float(cost_line.split("Muon: ")[1].split("%")[0]) == pytest.approx(cost, abs=0.051)
    low, high = (float(x.rstrip("%)")) for x in cost_line.split("(rounds ")[1].split(" to "))
    assert low - 0.051 <= cost <= high + 0.051
    assert "target" not in proc.stdout
    assert result["benchmark"] == "train-speed" and result["setup"]["preset"] == "pico"
    assert "python -m picogpt.bench.train_speed --engines picogpt,picogpt-muon" in result["command"]
    proc = run_cli("picogpt.bench.train_speed", "--newton-schulz", "--model", "pico", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    full, floor = (float(part.split(" ms")[0].split()[-1]) for part in proc.stdout.split(";"))
    assert 0 < floor < full  # five iterations cost more than the two products every orthogonalisation needs


def test_train_speed_times_a_forced_matmul_library_and_refuses_unknown_engines() -> None:
    proc = run_cli("picogpt.bench.train_speed", "--engines", "picogpt-muon:blas,picogpt-muon:onednn", "--rounds",
                   "1", "--model", "pico", "--batch-size", "2", "--seq-windows", "2", "--tokens", "500",
                   "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "picogpt-muon:blas " in proc.stdout.splitlines()[-1] and "picogpt-muon:onednn " in proc.stdout
    proc = run_cli("picogpt.bench.train_speed", "--engines", "picogpt,picogpt:mkl", "--rounds", "1")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: --engines: unknown engine 'picogpt:mkl'") and proc.stderr.count("\n") == 1


def test_window_gain_standard_error_matches_a_sequence_at_a_time_reference(random_model) -> None:
    """The streamed scorer's per-sequence sums and the gain's standard error, against scoring each sequence
    alone (with equal sequences the ratio estimator's error is the plain standard error of their gains)."""
    import numpy as np
    import torch
    from torch.nn import functional as F

    from picogpt.train.evaluate import stream_score

    n = random_model.config.context_len
    seq, m = 3 * n, 6
    ids = np.random.default_rng(0).integers(0, random_model.config.vocab_size - 8, size=m * seq + 1)
    carried, zeroed = (stream_score(random_model, ids, seq, carry=c, batch_size=4) for c in (True, False))
    gains = np.zeros((m, 3))
    for i in range(m):
        x = torch.from_numpy(ids[i * seq : (i + 1) * seq])[None]
        y = torch.from_numpy(ids[i * seq + 1 : (i + 1) * seq + 1])[None]
        for carry, sign in ((True, -1), (False, 1)):
            with torch.no_grad():
                for k, (logits, _) in enumerate(random_model.iter_windows(x, carry=carry)):
                    gains[i, k] += sign * F.cross_entropy(logits[0], y[0, k * n : (k + 1) * n]).item()
    assert np.allclose(zeroed.per_window() - carried.per_window(), gains.mean(0), atol=1e-5)
    assert np.allclose(zeroed.gain_se(carried), gains.std(0, ddof=1) / np.sqrt(m), atol=1e-6)
    assert zeroed.gain_se(carried)[1:].min() > 0 and zeroed.gain_se(carried)[0] == 0  # window 1: both zero


def test_bench_batches_threads_and_the_cache_aware_roofline(exported: Path, tmp_path: Path) -> None:
    """--batches adds rows of total tokens/s; the roofline names the level the weights are read from."""
    js = tmp_path / "b.json"
    proc = run_cli("picogpt.bench", "--onnx", str(exported), "--rounds", "1", "--tokens", "40", "--batches", "1,4",
                   "--threads", "1,2", "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(js.read_text())
    rows = {(r["threads"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(1, 1), (1, 4), (2, 1), (2, 4)}
    assert rows[(2, 1)]["threads_used"] in ("1", "2") and rows[(1, 1)]["threads_used"] == "1"
    assert "batch 4 total tokens/s" in proc.stdout and "2 threads" in proc.stdout
    roof = result["roofline"]
    assert set(roof["bandwidth"]) == {"L2", "L3", "DRAM"} and roof["int8_gops"] > 0 and roof["gemm_gflops"] > 0
    tiny = exported.stat().st_size  # ~100 kB: it lives in L2 (or the arithmetic bounds it)
    assert tiny < roof["caches"]["L2"] and rows[(1, 1)]["bound"] in ("memory (L2)", "compute (fp32)")


def test_bench_llamacpp_engines_say_how_to_install_or_run(tiny_ckpt: Path, tmp_path: Path) -> None:
    """Without llama-cpp-python: one note saying how to install it, the other engines still run. With it: the
    engines run and their ratio to ort-int8 is printed."""
    from picogpt.bench.llamacpp import available

    js = tmp_path / "b.json"
    proc = run_cli("picogpt.bench", str(tiny_ckpt), "--quick", "--engines", "ort-int8,llamacpp-q8_0", "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    engines = {r["engine"] for r in json.loads(js.read_text())["rows"]}
    if available():
        assert engines == {"ort-int8"} and proc.stderr.count("pip install") == 1
    else:
        assert engines == {"ort-int8", "llamacpp-q8_0"} and "ort-int8 vs llamacpp-q8_0" in proc.stdout


def test_llamacpp_gguf_matches_torch_on_the_first_window(random_model, tmp_path: Path) -> None:
    """The GGUF is the model: llama.cpp's first-window logits are torch's (GELU tanh-approximated there)."""
    from picogpt.bench.llamacpp import LlamaCppDecoder, available, check_first_window, gguf_config, write_gguf
    from picogpt.tokenizer import CharTokenizer

    if available():
        pytest.skip(available())
    paths = {f"llamacpp-{q}": write_gguf(random_model, CharTokenizer(), tmp_path / f"{q}.gguf", q)
             for q in ("f32", "q8_0", "q4_0")}
    assert gguf_config(paths["llamacpp-f32"]) == random_model.config
    checked = check_first_window(random_model, paths)
    assert checked["llamacpp-f32"][0] < 1e-2 and checked["llamacpp-f32"][1] == 1.0
    assert checked["llamacpp-f32"][0] < checked["llamacpp-q8_0"][0] < checked["llamacpp-q4_0"][0]
    decoder = LlamaCppDecoder(paths["llamacpp-f32"], 1, overlap=4)  # rolls over past a full window
    state = decoder.new_state()
    n = random_model.config.n_positions
    for i in range(2 * n):
        logits = decoder.feed(np.array([[1 + i % 50]]), state)
        assert logits.shape == (1, random_model.config.vocab_size) and 0 < state.pos <= n
    decoder.close()


def test_busy_report_ignores_blips_and_names_a_steady_neighbour(monkeypatch: pytest.MonkeyPatch) -> None:
    looks = iter([1, 3, 1, 1, 2, 1])  # a `ps` or a kernel worker seen in two of six looks: not a neighbour
    with monkeypatch.context() as m:
        m.setattr(system_info, "running_now", lambda: next(looks))
        assert system_info.busy_report(use_load=False, samples=6, interval=0) == ""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        report = system_info.busy_report(use_load=False)
    finally:
        spinner.kill()
        spinner.wait()
    assert "other runnable process" in report and not report.split(", ")[1].startswith("0 ")
