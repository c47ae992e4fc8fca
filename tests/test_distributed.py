"""Scale-out: torchrun + DDP (gloo) on loopback, data shards, a dying rank, `picogpt-prepare`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, assert_one_line_error, make_corpus, run_cli
from picogpt.checkpoint import load_checkpoint
from picogpt.data.text import TokenData
from picogpt.data.wikipedia import is_val_article
from picogpt.tokenizer import CharTokenizer

pytestmark = pytest.mark.slow  # multi-process training: minutes

TINY_RUN = ["--dataset", "text", "--batch-size", "2", "--seq-windows", "3", "--eval-iters", "2", "--quiet",
            "--no-report", *TINY]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "picogpt.train", *args]


def records(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_processes_resume_a_one_process_run_stay_identical_and_learn(corpus_file: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    first = run_cli("picogpt.train", *TINY_RUN, "--data", str(corpus_file), "--out", str(out), "--max-iters", "40",
                    "--eval-interval", "10", "--lr", "3e-3")
    assert first.returncode == 0, first.stderr
    saved = load_checkpoint(out / "ckpt.pt")
    assert saved["step"] == 40 and saved["world_size"] == 1
    cmd = torchrun(2, *TINY_RUN, "--data", str(corpus_file), "--out", str(out), "--resume", "--max-iters", "80")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = records(out)
    # step 40 is logged once: the resumed run does not score again the step its checkpoint holds
    assert [r["step"] for r in log] == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    two = [r for r in log if r.get("world_size") == 2]
    assert [r["step"] for r in two] == [50, 60, 70, 80] and all(r["ranks_in_sync"] for r in two)
    assert log[-1]["val_loss"] < log[4]["val_loss"] < log[0]["val_loss"] - 0.5
    assert proc.stdout.count("step 60:") == 1  # only rank 0 reports
    assert load_checkpoint(out / "ckpt.pt")["world_size"] == 2


SYNC_SCRIPT = """
import sys, torch
from picogpt.config import GPTConfig
from picogpt.train.distributed import init_distributed
from picogpt.model import GPT
dist = init_distributed()
torch.manual_seed(0)
model = GPT(GPTConfig(context_len=16, n_layer=2, n_head=2, n_embd=32))
if dist.rank == 1 and sys.argv[1] == "perturb":
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1e-6
print(dist.in_sync(model))
dist.close()
"""


@pytest.mark.parametrize("perturb", [False, True])
def test_sync_check_sees_a_one_parameter_difference(perturb: bool) -> None:
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", SYNC_SCRIPT, "perturb" if perturb else "same"],
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == [str(not perturb)] * 2


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (a child of `parent`)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def test_dead_rank_stops_the_job_cleanly_and_resume_works_at_another_world_size(corpus_file: Path,
                                                                                 tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    job = subprocess.Popen(torchrun(2, *TINY_RUN, "--data", str(corpus_file), "--out", str(out), "--max-iters",
                                    "100000", "--eval-interval", "10"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while len(records(out)) < 3 and time.time() < deadline and job.poll() is None:
            time.sleep(0.2)
        assert len(records(out)) >= 3, "the job did not get going"
        victim = rank_pid(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error: rank 0")]
    assert errors and ("lost contact" in errors[0] or "stopped by the launcher" in errors[0]), stderr[-3000:]
    assert "[rank0]: Traceback" not in stderr
    saved = load_checkpoint(out / "ckpt.pt")  # intact: written atomically
    assert saved["world_size"] == 2 and saved["step"] >= 10
    # resume the two-process run as one process, a few steps further
    more = run_cli("picogpt.train", *TINY_RUN, "--data", str(corpus_file), "--out", str(out), "--resume",
                   "--max-iters", str(saved["step"] + 10), "--eval-interval", "10")
    assert more.returncode == 0, more.stderr
    last = records(out)[-1]
    assert last["step"] == saved["step"] + 10 and "world_size" not in last


def test_token_data_shards_are_disjoint() -> None:
    ids = np.arange(10_000) % 80
    shards = []
    for rank in range(3):
        d = TokenData(ids.copy(), seq_len=64)
        d.shard(rank, 3)
        shards.append(d.train)
    assert sum(len(s) for s in shards) <= 9_000 and all(len(s) == 3_000 for s in shards)
    starts = [np.shares_memory(a, b) for a, b in ((shards[0], shards[1]), (shards[1], shards[2]))]
    assert not any(starts)
    with pytest.raises(Exception, match="shard"):
        TokenData(ids.copy(), seq_len=64).shard(0, 200)


def test_prepare_wikipedia_writes_memmaps_training_reads(tmp_path: Path) -> None:
    from test_data import wiki_rows, write_parquet

    rows = wiki_rows(40)
    write_parquet(tmp_path / "a.parquet", rows[:20])
    write_parquet(tmp_path / "b.parquet", rows[20:])
    out = tmp_path / "prepared"
    proc = run_cli("picogpt.data.prepare", "wikipedia", "--data-files", str(tmp_path / "*.parquet"), "--out", str(out),
                   "--num-proc", "2", "--val-percent", "20", "--shards", "7")
    assert proc.returncode == 0, proc.stderr
    tok = CharTokenizer()
    for split, val in (("train", False), ("val", True)):
        want = "".join(r["text"] + "\n\n" for r in rows if is_val_article(r["id"], 20) == val)
        got = np.fromfile(out / f"{split}.bin", dtype=np.uint8)
        assert tok.decode(got.tolist()) == tok.decode(tok.encode(want))
    run = tmp_path / "run"
    train = run_cli("picogpt.train", "--dataset", "text", "--data", str(out / "train.bin"), "--out", str(run),
                    "--max-iters", "2", "--eval-interval", "2", "--batch-size", "2", "--seq-windows", "2",
                    "--eval-iters", "1", "--quiet", "--no-report", *TINY)
    assert train.returncode == 0, train.stderr
    bad = run_cli("picogpt.data.prepare", "wikipedia", "--data-files", str(tmp_path / "none-*.parquet"),
                  "--out", str(out))
    assert_one_line_error(bad, "matched no files")


def test_data_too_small_for_the_world_size(tmp_path: Path) -> None:
    ids = np.asarray(CharTokenizer().encode(make_corpus(3_000)), dtype=np.uint8)
    ids[:200].tofile(tmp_path / "train.bin")  # one process could train on it; two cannot share it
    ids[200:].tofile(tmp_path / "val.bin")
    proc = subprocess.run(torchrun(2, *TINY_RUN, "--data", str(tmp_path / "train.bin"), "--out", str(tmp_path / "r"),
                                   "--seq-windows", "8", "--max-iters", "2"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert any(line.startswith("error:") and "shard" in line for line in proc.stderr.splitlines()), proc.stderr[-2000:]
