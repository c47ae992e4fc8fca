"""`picogpt-train` driven as a user drives it: a tiny model, real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY, assert_one_line_error, run_cli, run_main
from picogpt.windows import window_spans

FAST = [*TINY, "--batch-size", "4", "--seq-windows", "3", "--eval-iters", "2", "--quiet", "--no-report"]


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_writes_log_plot_checkpoint_and_learns(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out),
                   "--max-iters", "60", "--eval-interval", "20", "--lr", "3e-3", "--warmup-iters", "5",
                   "--threads", "2", *FAST[:-1])
    assert proc.returncode == 0, proc.stderr
    recs = log_records(out)
    assert [r["step"] for r in recs] == [0, 20, 40, 60]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"] - 1.0  # it learns the synthetic corpus
    # tokens/s counts the tokens of the steps since the last eval over at most the time between the two records
    assert recs[0]["tokens_per_s"] == 0  # no step before the first eval
    for before, rec in zip(recs, recs[1:]):
        assert rec["tokens_per_s"] * (rec["elapsed_s"] - before["elapsed_s"] + 0.02) >= 20 * 4 * 3 * 16 * 0.999
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 60 and ckpt["config"]["context_len"] == 16
    # the end-of-run report: per-window val loss with the carried vs zeroed context vector
    assert "carried" in proc.stdout and "zeroed" in proc.stdout
    # the whole val split, streamed in sequences of 160 characters as generation reads them (each new window
    # re-reads 4, the default overlap for windows of 16): one row per window, the plain protocol beside
    windows = len(list(window_spans(4 + 160, 16, 4)))
    assert len([ln for ln in proc.stdout.splitlines() if ln.strip()[:1].isdigit()]) == windows == 14
    assert "re-reads 4 characters" in proc.stdout and "plain protocol" in proc.stdout
    assert "by characters of context in the window" in proc.stdout


# picogpt-train with a real SIGINT sent to itself right after a given step: the signal arrives mid-run at a known
# step however loaded the machine is.
INTERRUPTED_AT = """
import os, signal, sys
from picogpt.train import loop
step = loop.TrainingRun.train_step
def train_step(self):
    out = step(self)
    if self.step == {at}:
        os.kill(os.getpid(), signal.SIGINT)
    return out
loop.TrainingRun.train_step = train_step
sys.argv[0] = "picogpt-train"
from picogpt.train.cli import main
main()
"""


def test_interrupted_run_resumes_to_the_same_losses(corpus_file: Path, tmp_path: Path) -> None:
    args = ["--dataset", "text", "--data", str(corpus_file), "--max-iters", "24", "--eval-interval", "4",
            "--threads", "2", *FAST]
    full = tmp_path / "full"
    assert run_cli("picogpt.train", *args, "--out", str(full)).returncode == 0

    part = tmp_path / "part"
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_AT.format(at=7), *args, "--out", str(part)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr  # Ctrl-C saves, then exits non-zero
    assert "Traceback" not in proc.stderr
    assert torch.load(part / "ckpt.pt", weights_only=True)["step"] == 7, proc.stdout  # saved where it stopped
    assert "--resume" in proc.stdout

    assert run_cli("picogpt.train", *args, "--out", str(part), "--resume").returncode == 0
    by_step_full = {r["step"]: r["val_loss"] for r in log_records(full)}
    by_step_part = {r["step"]: r["val_loss"] for r in log_records(part)}
    assert max(by_step_part) == 24
    for step, loss in by_step_part.items():
        assert loss == pytest.approx(by_step_full[step], abs=1e-5), step


def test_wikipedia_training_from_local_parquet(tmp_path: Path) -> None:
    from test_data import wiki_rows, write_parquet

    write_parquet(tmp_path / "wiki.parquet", wiki_rows(80))
    out = tmp_path / "wiki-run"
    proc = run_cli("picogpt.train", "--dataset", "wikipedia", "--data-files", str(tmp_path / "*.parquet"),
                   "--val-percent", "20", "--out", str(out), "--max-iters", "4", "--eval-interval", "2",
                   "--threads", "1", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert [r["step"] for r in log_records(out)] == [0, 2, 4]
    # the sampled articles are scored as generation reads them: with the overlap, and the plain protocol beside
    from picogpt.train.evaluate import main as eval_main

    plain, overlapped = (run_main(eval_main, str(out / "ckpt.pt"), "--overlap", k) for k in ("0", "4"))
    assert plain.returncode == 0 and overlapped.returncode == 0, plain.stderr + overlapped.stderr
    assert "re-reads 4 characters" in overlapped.stdout and "plain protocol" not in plain.stdout
    rows = [line.split() for line in overlapped.stdout.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(rows) == len(list(window_spans(3 * 16, 16, 4)))  # --seq-windows 3 of 16 characters, 4 re-read
    plain_mean = next(line.split()[1] for line in plain.stdout.splitlines() if line.strip().startswith("mean"))
    assert f"plain protocol (a new window re-reads nothing): {plain_mean};" in overlapped.stdout, overlapped.stdout


def test_bad_inputs_fail_cleanly(corpus_file: Path, tmp_path: Path) -> None:
    base = ["--dataset", "text", "--max-iters", "2", *FAST]
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 10)
    short = tmp_path / "short.txt"
    short.write_text("tiny text\n")
    cases = [
        (["--data", str(tmp_path / "nope.txt")], "not found"),
        (["--data", str(empty)], "empty"),
        (["--data", str(binary)], "binary"),
        (["--data", str(short)], "too short"),
        (["--data", str(corpus_file), "--batch-size", "0"], "--batch-size"),
        (["--data", str(corpus_file), "--threads", "0"], "--threads"),
        (["--data", str(corpus_file), "--resume", "--out", str(tmp_path / "fresh")], "checkpoint not found"),
        (["--data", str(corpus_file), "--out", str(corpus_file / "sub")], "not writable"),
    ]
    for extra, fragment in cases:
        assert_one_line_error(run_cli("picogpt.train", *base, *extra), fragment)


def test_resume_refuses_truncated_or_foreign_checkpoints(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--dataset", "text", "--data", str(corpus_file), "--out", str(out), "--max-iters", "2", *FAST]
    assert run_cli("picogpt.train", *args).returncode == 0
    good = (out / "ckpt.pt").read_bytes()
    # another model shape
    other = [a if a != "32" else "48" for a in args]
    assert_one_line_error(run_cli("picogpt.train", *other, "--resume"), "another model config")
    # truncated
    (out / "ckpt.pt").write_bytes(good[: len(good) // 2])
    assert_one_line_error(run_cli("picogpt.train", *args, "--resume"), "corrupt or truncated")


def test_eval_cli_reports_windows(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--dataset", "text", "--data", str(corpus_file), "--out", str(out), "--max-iters", "2", *FAST]
    assert run_cli("picogpt.train", *args).returncode == 0
    proc = run_cli("picogpt.train.evaluate", str(out / "ckpt.pt"), "--data", str(corpus_file), "--batches", "1")
    assert proc.returncode == 0, proc.stderr
    assert "carried" in proc.stdout and "mean" in proc.stdout
    assert_one_line_error(run_cli("picogpt.train.evaluate", str(tmp_path / "missing.pt")), "not found")


@pytest.mark.skipif(not os.environ.get("PICOGPT_DATA"), reason="needs PICOGPT_DATA with tinyshakespeare.txt")
def test_tinyshakespeare_default_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ts"
    proc = run_cli("picogpt.train", "--out", str(out), "--max-iters", "2", "--eval-interval", "2", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert [r["step"] for r in log_records(out)] == [0, 2]


def test_a_checkpoint_from_before_data_settings_were_stored_resumes(tiny_run: Path, corpus_file: Path,
                                                                     tmp_path: Path) -> None:
    """Earlier checkpoints kept only `dataset` in their recipe: --resume takes the data flags of the command."""
    import shutil

    out = tmp_path / "old"
    shutil.copytree(tiny_run, out)
    state = torch.load(out / "ckpt.pt", weights_only=True)
    del state["data_config"]
    state["train_config"]["dataset"] = "text"
    torch.save(state, out / "ckpt.pt")
    proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out), "--resume",
                   "--max-iters", "32", "--quiet", "--no-report")
    assert proc.returncode == 0 and "ignored" not in proc.stderr, proc.stderr
    assert torch.load(out / "ckpt.pt", weights_only=True)["data_config"]["path"] == str(corpus_file)


def test_matmul_libraries_train_the_same_run(corpus_file: Path, tmp_path: Path) -> None:
    """--matmul blas and --matmul onednn announce themselves and learn the same losses, to float noise."""
    losses = {}
    for kernel, says in [("blas", "matmul: BLAS (--matmul blas)"), ("onednn", "matmul: oneDNN (--matmul onednn;")]:
        out = tmp_path / kernel
        proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out),
                       "--max-iters", "20", "--eval-interval", "10", "--threads", "2", "--matmul", kernel, *FAST)
        assert proc.returncode == 0, proc.stderr
        assert says in proc.stdout
        losses[kernel] = [r["val_loss"] for r in log_records(out)]
    assert losses["blas"][-1] < losses["blas"][0] - 0.5
    assert losses["onednn"] == pytest.approx(losses["blas"], abs=2e-3)
