"""Nothing lost, nothing unexplained: the ways a hostile-but-fair user found to lose work, each driven as a user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_one_line_error, run_cli

FAST = [*TINY, "--batch-size", "4", "--seq-windows", "2", "--eval-iters", "2", "--quiet", "--no-report"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    out = tmp_path_factory.mktemp("rel") / "run"
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out),
                   "--max-iters", "6", "--eval-interval", "3", *FAST)
    assert proc.returncode == 0, proc.stderr
    return out


def test_export_never_writes_onto_its_checkpoint_or_a_foreign_file(trained: Path, corpus_file: Path,
                                                                    tmp_path: Path) -> None:
    ckpt = trained / "ckpt.pt"
    before = ckpt.read_bytes()
    assert_one_line_error(run_cli("picogpt.export", str(ckpt), "-o", str(ckpt)), "is the checkpoint")
    other = tmp_path / "notes.onnx"
    other.write_text("my notes, not a model")
    assert_one_line_error(run_cli("picogpt.export", str(ckpt), "-o", str(other)), "not an earlier picogpt export")
    assert ckpt.read_bytes() == before and other.read_text() == "my notes, not a model"
    # an earlier export may be replaced (that is what re-exporting is for)
    out = tmp_path / "m.onnx"
    for _ in range(2):
        proc = run_cli("picogpt.export", str(ckpt), "-o", str(out), "--data", str(corpus_file))
        assert proc.returncode == 0, proc.stderr


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset", "text", "--data", str(corpus), "--out", str(out), *FAST, *extra]


def test_training_refuses_to_start_over_an_earlier_run(trained: Path, corpus_file: Path) -> None:
    before = (trained / "ckpt.pt").read_bytes()
    log_before = (trained / "log.jsonl").read_text()
    proc = run_cli("picogpt.train", *train_args(corpus_file, trained, "--max-iters", "3"))
    assert_one_line_error(proc, "--resume")
    assert (trained / "ckpt.pt").read_bytes() == before and (trained / "log.jsonl").read_text() == log_before


def test_overwrite_starts_over(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert run_cli("picogpt.train", *train_args(corpus_file, out, "--max-iters", "4", "--eval-interval", "2")
                   ).returncode == 0
    proc = run_cli("picogpt.train", *train_args(corpus_file, out, "--max-iters", "2", "--eval-interval", "2",
                                                "--overwrite"))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 2]


def start_training(corpus: Path, out: Path) -> subprocess.Popen:
    """A long run in its own process; returns once it has logged a few evals."""
    proc = subprocess.Popen([sys.executable, "-m", "picogpt.train",
                             *train_args(corpus, out, "--max-iters", "100000", "--eval-interval", "3")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 3:
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("training did not start")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_then_exits_non_zero_and_the_run_resumes(sig: int, code: int, corpus_file: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "sig"
    proc = start_training(corpus_file, out)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "--resume" in stdout and signal.Signals(sig).name in stdout
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    assert step > 0
    proc = run_cli("picogpt.train", *train_args(corpus_file, out, "--max-iters", str(step + 3), "--resume"))
    assert proc.returncode == 0, proc.stderr
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == step + 3


def test_kill_9_leftovers_are_cleaned_and_the_log_repaired_on_resume(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = start_training(corpus_file, out)
    proc.kill()
    proc.communicate(timeout=60)
    step = torch.load(out / "ckpt.pt", weights_only=True)["step"]
    # what a kill -9 can leave: a temp checkpoint, log records past the checkpoint, a torn last line
    (out / ".ckpt-abc123.tmp").write_bytes(b"\0" * 1000)
    with (out / "log.jsonl").open("a") as f:
        f.write(json.dumps({"step": step + 1000, "val_loss": 1.0}) + "\n" + '{"step": 12, "val_lo')
    proc = run_cli("picogpt.train", *train_args(corpus_file, out, "--max-iters", str(step + 3), "--resume"))
    assert proc.returncode == 0, proc.stderr
    assert not list(out.glob(".ckpt-*.tmp"))
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == step + 3 and step + 1000 not in steps


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(trained: Path, corpus_file: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "nan"
    proc = run_cli("picogpt.train", *train_args(corpus_file, out, "--max-iters", "50", "--eval-interval", "1",
                                                "--lr", "1e30", "--warmup-iters", "1", "--optimizer", "adamw"))
    assert_one_line_error(proc, "diverged")
    if (out / "ckpt.pt").exists():  # only checkpoints saved before the blow-up: finite weights
        state = torch.load(out / "ckpt.pt", weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in state.values())
