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

from conftest import TINY, assert_one_line_error, meta_of, run_cli

FAST = [*TINY, "--batch-size", "4", "--seq-windows", "2", "--eval-iters", "2", "--quiet", "--no-report"]


def test_export_never_writes_onto_its_checkpoint_or_a_foreign_file(tiny_run: Path, corpus_file: Path,
                                                                    tmp_path: Path) -> None:
    ckpt = tiny_run / "ckpt.pt"
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


def test_training_refuses_to_start_over_an_earlier_run(tiny_run: Path, corpus_file: Path) -> None:
    before = (tiny_run / "ckpt.pt").read_bytes()
    log_before = (tiny_run / "log.jsonl").read_text()
    proc = run_cli("picogpt.train", *train_args(corpus_file, tiny_run, "--max-iters", "3"))
    assert_one_line_error(proc, "--resume")
    assert (tiny_run / "ckpt.pt").read_bytes() == before and (tiny_run / "log.jsonl").read_text() == log_before


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


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_run: Path, corpus_file: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "nan"
    proc = run_cli("picogpt.train", *train_args(corpus_file, out, "--max-iters", "50", "--eval-interval", "1",
                                                "--lr", "1e30", "--warmup-iters", "1", "--optimizer", "adamw"))
    assert_one_line_error(proc, "diverged")
    if (out / "ckpt.pt").exists():  # only checkpoints saved before the blow-up: finite weights
        state = torch.load(out / "ckpt.pt", weights_only=True)["model"]
        assert all(torch.isfinite(t).all() for t in state.values())


def bad_data_files(tmp: Path) -> dict[str, Path]:
    folder = tmp / "folder"
    folder.mkdir()
    fifo = tmp / "pipe.txt"
    os.mkfifo(fifo)
    empty_bin = tmp / "empty" / "train.bin"
    empty_bin.parent.mkdir()
    empty_bin.write_bytes(b"")
    foreign_bin = tmp / "foreign.bin"
    foreign_bin.write_bytes(bytes(range(256)) * 64)  # ids up to 255: not this tokenizer's
    return {"a folder": folder, "not a regular file": fifo, "is empty": empty_bin,
            "outside this tokenizer": foreign_bin, "not a regular file ": Path("/dev/zero")}


def test_data_that_is_not_character_text_is_one_line(tmp_path: Path) -> None:
    for fragment, path in bad_data_files(tmp_path).items():
        proc = run_cli("picogpt.train", "--dataset", "text", "--data", str(path), "--out", str(tmp_path / "o"),
                       "--max-iters", "1", *FAST, timeout=60)
        assert_one_line_error(proc, fragment.strip())


def test_negative_seed_and_absurd_threads_are_one_line(corpus_file: Path, tmp_path: Path) -> None:
    base = train_args(corpus_file, tmp_path / "o", "--max-iters", "1")
    assert_one_line_error(run_cli("picogpt.train", *base, "--seed", "-1"), "--seed")
    assert_one_line_error(run_cli("picogpt.train", *base, "--threads", "100000"), "--threads")
    assert_one_line_error(run_cli("picogpt.runtime", "--prompt", "A", "--seed", "-5"), "--seed")
    assert_one_line_error(run_cli("picogpt.runtime", "--prompt", "A", "--threads", "100000"), "--threads")
    assert_one_line_error(run_cli("picogpt.runtime", "--prompt", "A", "--num-samples", "100000000"),
                          "--num-samples")


def test_a_prompt_that_is_not_utf8_is_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "picogpt.runtime", "--max-new-tokens", "5"], input=b"ROMEO \xff\xfe",
                          capture_output=True, timeout=60)
    proc.stderr, proc.stdout = proc.stderr.decode(), proc.stdout.decode()
    assert_one_line_error(proc, "not valid UTF-8")


def damaged(exported: Path, tmp: Path, **changes: str | None) -> Path:
    """A copy of an exported file with some picogpt.* metadata replaced (None deletes the key)."""
    from picogpt.export.build import set_metadata
    from picogpt.runtime.decoder import OnnxDecoder

    meta = {f"picogpt.{k}": v for k, v in OnnxDecoder(exported).metadata.items()}
    for key, value in changes.items():
        if value is None:
            meta.pop(f"picogpt.{key}")
        else:
            meta[f"picogpt.{key}"] = value
    out = tmp / f"damaged-{len(list(tmp.iterdir()))}.onnx"
    out.write_bytes(exported.read_bytes())
    set_metadata(out, meta)
    return out


def test_damaged_metadata_is_refused_at_load(exported: Path, tmp_path: Path) -> None:
    from picogpt.runtime.decoder import OnnxDecoder

    cfg = json.loads(OnnxDecoder(exported).metadata["config"])
    cases = {
        "lacks 'tokenizer'": damaged(exported, tmp_path, tokenizer=None),
        "not valid": damaged(exported, tmp_path, config="{not json"),
        "not valid ": damaged(exported, tmp_path, config=json.dumps({**cfg, "n_layer": "two"})),
        "slot_id": damaged(exported, tmp_path, protocol=json.dumps({"slot_id": "88"})),
        "the graph's context has size": damaged(exported, tmp_path, config=json.dumps({**cfg, "n_embd": 64,
                                                                                       "n_head": 2})),
    }
    for fragment, path in cases.items():
        proc = run_cli("picogpt.runtime", "-m", str(path), "--prompt", "A", "--max-new-tokens", "3")
        assert_one_line_error(proc, fragment.strip())
        assert proc.stdout == ""  # refused before any text is printed


def test_a_stop_string_is_one_string(exported: Path) -> None:
    from picogpt.runtime import Generator, SamplingConfig

    g = Generator(exported)
    free = g.generate("A", max_new_tokens=200, sampling=SamplingConfig(temperature=1.0), seed=3)
    stop = free[5:7]  # two characters the unconstrained text contains
    cut = g.generate("A", max_new_tokens=200, sampling=SamplingConfig(temperature=1.0), seed=3, stop=stop)
    assert cut == free[: free.index(stop)]


def test_eval_reads_the_stored_data_and_names_the_flag_when_it_moved(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    assert run_cli("picogpt.train.evaluate", str(tiny_run / "ckpt.pt")).returncode == 0  # the stored --data
    state = torch.load(tiny_run / "ckpt.pt", weights_only=False)
    state["data_config"]["path"] = str(tmp_path / "moved.txt")
    torch.save(state, tmp_path / "ckpt.pt")
    proc = run_cli("picogpt.train.evaluate", str(tmp_path / "ckpt.pt"))
    assert_one_line_error(proc, "--data PATH")
    assert "moved.txt" in proc.stderr and "--dataset" not in proc.stderr


def test_resume_keeps_the_stored_data_and_says_so(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_cli("picogpt.train", *train_args(corpus_file, out, "--max-iters", "2", "--eval-interval", "2")
                   ).returncode == 0
    other = tmp_path / "other.txt"
    other.write_text(corpus_file.read_text()[::-1])
    proc = run_cli("picogpt.train", *train_args(other, out, "--max-iters", "3", "--eval-interval", "2", "--resume"))
    assert proc.returncode == 0, proc.stderr
    assert f"--data {other} is ignored on --resume; the checkpoint's {corpus_file} is kept" in proc.stderr
    assert proc.stderr.count("is ignored on --resume") == 1


@pytest.mark.parametrize("flag", ["--json", "--markdown", "--plot"])
def test_bench_output_paths_are_checked_before_the_work(flag: str, tiny_run: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "out.file"
    for args in ([str(tiny_run / "ckpt.pt"), "--quick"], ["quality", "--minutes", "5"]):
        t0 = time.perf_counter()
        proc = run_cli("picogpt.bench", *args, flag, str(missing))
        assert_one_line_error(proc, flag)
        assert time.perf_counter() - t0 < 30  # refused at once, not after minutes of work


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_damaged_wikipedia_file_is_refused_before_training(fmt: str, tmp_path: Path) -> None:
    from test_data import wiki_rows, write_parquet

    rows = wiki_rows(30)
    for i in range(3):
        path = tmp_path / f"wiki-{i}.{fmt}"
        if fmt == "parquet":
            write_parquet(path, rows[i * 10 : (i + 1) * 10])
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows[i * 10 : (i + 1) * 10]))
    damaged_file = tmp_path / f"wiki-1.{fmt}"
    damaged_file.write_bytes(damaged_file.read_bytes()[: damaged_file.stat().st_size // 2])  # a torn download
    proc = run_cli("picogpt.train", "--dataset", "wikipedia", "--data-files", str(tmp_path / f"*.{fmt}"),
                   "--out", str(tmp_path / "o"), "--max-iters", "2", *FAST)
    assert_one_line_error(proc, f"wiki-1.{fmt} is damaged")
    assert not (tmp_path / "o" / "ckpt.pt").exists()


def test_a_killed_exports_work_folder_is_removed_by_the_next_export(tiny_run: Path, corpus_file: Path,
                                                                     tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".picogpt-export-{dead.pid}-abc"
    stale.mkdir()
    (stale / "fp32.onnx").write_bytes(b"\0" * 100)
    live = tmp_path / f".picogpt-export-{os.getpid()}-xyz"  # a running export's folder is left alone
    live.mkdir()
    proc = run_cli("picogpt.export", str(tiny_run / "ckpt.pt"), "-o", str(tmp_path / "m.onnx"), "--no-verify")
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and live.exists()
    assert [p.name for p in tmp_path.glob(".picogpt-export-*")] == [live.name]


def test_a_config_the_fused_graph_cannot_run_is_refused_with_the_way_out(tmp_path: Path, corpus_file: Path) -> None:
    from picogpt.checkpoint import save_checkpoint
    from picogpt.config import GPTConfig
    from picogpt.model import GPT
    from picogpt.tokenizer import CharTokenizer

    config = GPTConfig(context_len=16, n_layer=1, n_head=2, n_embd=20)  # head size 10: GQA wants multiples of 8
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {"config": config.to_dict(), "tokenizer": CharTokenizer().to_json(),
                           "model": GPT(config).state_dict()})
    proc = run_cli("picogpt.export", str(ckpt), "-o", str(tmp_path / "m.onnx"))
    assert_one_line_error(proc, "--graph portable")
    assert "head size" in proc.stderr and not (tmp_path / "m.onnx").exists()
    proc = run_cli("picogpt.export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--graph", "portable",
                   "--data", str(corpus_file))
    assert proc.returncode == 0, proc.stderr
    run = run_cli("picogpt.runtime", "-m", str(tmp_path / "m.onnx"), "--verify")
    assert run.returncode == 0 and "fingerprint OK" in run.stdout, run.stderr


def test_verify_counts_ids_when_the_fingerprint_holds_special_tokens(tmp_path: Path) -> None:
    """A model (here, one built to) whose greedy text is special tokens: `<A>` decodes to three characters, so
    the fingerprint's text is longer than its 64 ids; --verify must still run exactly the exporter's 64."""
    from picogpt.checkpoint import save_checkpoint
    from picogpt.config import GPTConfig
    from picogpt.model import GPT
    from picogpt.tokenizer import CharTokenizer

    tok = CharTokenizer()
    config = GPTConfig(context_len=16, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = GPT(config)
    a = tok.encode("<A>")[0]
    with torch.no_grad():  # ln_f outputs only its bias, e0; the tied head then scores each id by its wte[:, 0]
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[a, 0] = 10.0
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {"config": config.to_dict(), "tokenizer": tok.to_json(), "model": model.state_dict()})
    proc = run_cli("picogpt.export", str(ckpt), "-o", str(tmp_path / "m.onnx"), "--no-verify")
    assert proc.returncode == 0, proc.stderr
    run = run_cli("picogpt.runtime", "-m", str(tmp_path / "m.onnx"), "--verify")
    assert run.returncode == 0 and "fingerprint OK" in run.stdout, run.stderr
    assert json.loads(meta_of(tmp_path / "m.onnx")["picogpt.fingerprint"])["greedy"].count("<A>") == 64
