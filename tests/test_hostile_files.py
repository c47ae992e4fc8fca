"""Files: no output overwrites an input or a file picogpt did not write, one run per folder, write errors are one
line with the earlier file kept, and what is read (checkpoints, articles, metadata) is checked, not trusted."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, assert_one_line_error, run_cli, run_main
from picogpt.bench.cli import main as bench_main
from picogpt.data.prepare import main as prepare_main
from picogpt.export.cli import main as export_main
from picogpt.runtime.cli import main as runtime_main
from picogpt.runtime.web import main as web_main
from picogpt.train.cli import main as train_main
from picogpt.train.evaluate import main as eval_main

FAST = [*TINY, "--batch-size", "4", "--seq-windows", "2", "--eval-iters", "1", "--quiet", "--no-report"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what must be byte-identical after a refusal."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. outputs never overwrite an input or a file picogpt did not write ------------------------------------


def output_cases(ckpt: Path, onnx: Path, corpus: Path, tmp: Path) -> list[tuple[object, list[str], str]]:
    notes = tmp / "notes.txt"
    m = str(tmp / "m.onnx")
    return [
        (export_main, [str(ckpt), "-o", str(ckpt)], "is the checkpoint"),
        (export_main, [str(ckpt), "-o", m, "--json", str(ckpt)], "--json"),
        (export_main, [str(ckpt), "-o", m, "--json", m], "--json"),
        (export_main, [str(ckpt), "-o", m, "--json", str(corpus), "--data", str(corpus)], "--json"),
        (export_main, [str(ckpt), "-o", m, "--json", str(notes)], "not written by picogpt"),
        (export_main, [str(ckpt), "-o", str(notes)], "not an earlier picogpt export"),
        (export_main, [str(ckpt), "-o", ""], "-o"),
        (export_main, [str(ckpt), "-o", m, "--json", ""], "--json"),
        (bench_main, ["--onnx", str(onnx), "--json", str(onnx)], "--json"),
        (bench_main, [str(ckpt), "--quick", "--json", str(ckpt)], "--json"),
        (bench_main, [str(ckpt), "--quick", "--markdown", str(notes)], "--markdown"),
        (bench_main, [str(ckpt), "--quick", "--plot", str(notes)], "--plot"),
        (bench_main, [str(ckpt), "--quick", "--json", str(tmp / "r"), "--markdown", str(tmp / "r")], "--markdown"),
        (bench_main, ["quality", "--onnx", str(onnx), "--data", str(corpus), "--json", str(corpus)], "--json"),
        (bench_main, ["quality", "--onnx", str(onnx), "--markdown", str(onnx)], "--markdown"),
        (train_main, ["--out", "", "--max-iters", "1", *FAST], "--out"),
        (web_main, [str(onnx), "-o", ""], "-o"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_no_output_overwrites_an_input_or_a_foreign_file(case: int, tiny_run: Path, exported: Path, corpus_file: Path,
                                                         tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("my notes, not a report")
    main, args, fragment = output_cases(tiny_run / "ckpt.pt", exported, corpus_file, tmp_path)[case]
    before = [snapshot(tmp_path), snapshot(tiny_run), exported.read_bytes(), corpus_file.read_bytes()]
    assert_one_line_error(run_main(main, *args), fragment)
    assert [snapshot(tmp_path), snapshot(tiny_run), exported.read_bytes(), corpus_file.read_bytes()] == before


@pytest.mark.parametrize("found", [["log.jsonl"], ["loss.png"], ["log.jsonl", "loss.png"]])
def test_train_does_not_replace_run_files_it_did_not_write(found: list[str], corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    for name in found:
        (out / name).write_text("the user's own file")
    proc = run_main(train_main, "--dataset", "text", "--data", str(corpus_file), "--out", str(out), *FAST)
    assert_one_line_error(proc, "--overwrite")
    assert all((out / name).read_text() == "the user's own file" for name in found)


@pytest.mark.parametrize("existing", ["train.bin", "val.bin"])
def test_prepare_does_not_replace_earlier_bins_without_overwrite(existing: str, tmp_path: Path) -> None:
    from test_data import wiki_rows

    (tmp_path / "wiki.jsonl").write_text("".join(json.dumps(r) + "\n" for r in wiki_rows(6)))
    out = tmp_path / "p"
    out.mkdir()
    (out / existing).write_bytes(b"\x05\x06 an earlier good file")
    proc = run_main(prepare_main, "wikipedia", "--data-files", str(tmp_path / "wiki.jsonl"), "--out", str(out))
    assert_one_line_error(proc, "--overwrite")
    assert (out / existing).read_bytes() == b"\x05\x06 an earlier good file"


@pytest.mark.parametrize("extra", [["holdings.csv"], ["group1-shard1of1.bin", "my.txt"]])
def test_web_does_not_take_a_folder_with_a_model_json_for_its_page(extra: list[str], exported: Path,
                                                                   tmp_path: Path) -> None:
    site = tmp_path / "tfjs"
    site.mkdir()
    (site / "model.json").write_text(json.dumps({"format": "layers-model", "modelTopology": {}}))
    for name in extra:
        (site / name).write_text("the user's")
    before = snapshot(site)
    assert_one_line_error(run_main(web_main, str(exported), "-o", str(site)), "did not write")
    assert snapshot(site) == before


def test_web_refuses_an_earlier_page_that_now_holds_other_files(exported: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    assert run_main(web_main, str(exported), "-o", str(site)).returncode == 0
    (site / "notes.md").write_text("added by hand")
    before = snapshot(site)
    assert_one_line_error(run_main(web_main, str(exported), "-o", str(site)), "notes.md")
    assert snapshot(site) == before
    (site / "notes.md").unlink()
    assert run_main(web_main, str(exported), "-o", str(site)).returncode == 0  # the page alone is replaced


# ---- 2. one run per folder -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cli", ["train", "prepare"])
def test_a_second_run_on_a_locked_folder_is_refused_and_touches_nothing(cli: str, corpus_file: Path,
                                                                         tmp_path: Path) -> None:
    from test_data import wiki_rows

    out = tmp_path / "o"
    out.mkdir()
    (out / ".ckpt-live.tmp").write_bytes(b"a running run's half-written save")
    (out / "train.bin.tmp").write_bytes(b"a running prepare's memmap")
    fd = os.open(out / ".picogpt.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)  # the running one (from another open file: flock sees two owners)
    try:
        before = snapshot(out)
        if cli == "train":
            proc = run_main(train_main, "--dataset", "text", "--data", str(corpus_file), "--out", str(out), *FAST)
        else:
            (tmp_path / "w.jsonl").write_text("".join(json.dumps(r) + "\n" for r in wiki_rows(4)))
            proc = run_main(prepare_main, "wikipedia", "--data-files", str(tmp_path / "w.jsonl"), "--out", str(out))
        assert_one_line_error(proc, "in use by another run (pid 4242)")
        assert snapshot(out) == before
    finally:
        os.close(fd)


# ---- 4. write errors: one line, and the earlier file survives -----------------------------------------------


@pytest.mark.parametrize("name, resume", [("ckpt.pt", False), ("log.jsonl", False), ("loss.png", False),
                                          ("log.jsonl", True), ("loss.png", True)])
def test_a_folder_in_the_way_of_a_run_file_is_refused_before_training(name: str, resume: bool, tiny_run: Path,
                                                                      corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    if resume:
        (out / "ckpt.pt").write_bytes((tiny_run / "ckpt.pt").read_bytes())
    (out / name).mkdir()
    args = ["--dataset", "text", "--data", str(corpus_file), "--out", str(out), *FAST, *(["--resume"] * resume)]
    proc = run_main(train_main, *args)
    assert_one_line_error(proc, f"{name} is a folder")
    assert "step 0" not in proc.stdout


def immutable(path: Path, on: bool) -> bool:
    """`chattr +i`: even root cannot write it (a read-only mode bit does not stop root)."""
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("target", ["ckpt.pt", "."])
def test_resume_onto_a_checkpoint_that_cannot_be_written_fails_before_training(target: str, tiny_run: Path,
                                                                              corpus_file: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    for name in ("ckpt.pt", "log.jsonl"):
        (out / name).write_bytes((tiny_run / name).read_bytes())
    before = snapshot(out)
    if not immutable(out / target, True):
        pytest.skip("chattr +i is not available here (no e2fsprogs, or no CAP_LINUX_IMMUTABLE)")
    try:
        proc = run_main(train_main, "--dataset", "text", "--data", str(corpus_file), "--out", str(out), *FAST,
                        "--max-iters", "40", "--resume")
    finally:
        immutable(out / target, False)
    assert_one_line_error(proc, "cannot be written" if target == "ckpt.pt" else "not writable")
    after = {name: data for name, data in snapshot(out).items() if name != ".picogpt.lock"}  # the run's own lock
    assert "step 3" not in proc.stdout and after == before


@pytest.mark.parametrize("main, args", [(export_main, ["-o", "{tmp}/m.onnx", "--json", "{tmp}"]),
                                        (bench_main, ["--quick", "--json", "{tmp}"]),
                                        (bench_main, ["--quick", "--plot", "{tmp}"])])
def test_a_folder_as_a_report_file_is_refused_before_the_work(main, args: list[str], tiny_ckpt: Path,
                                                              tmp_path: Path) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    assert_one_line_error(run_main(main, str(tiny_ckpt), *args), "is a folder")


@pytest.mark.parametrize("args", [["--prompt", "ROMEO:", "--max-new-tokens", "50"], ["--verify"],
                                  ["--prompt", "a", "--num-samples", "2", "--max-new-tokens", "20"]])
def test_run_into_a_full_stdout_is_one_line(args: list[str], exported: Path) -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "picogpt.runtime", "-m", str(exported), *args], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    proc.stdout = ""
    assert_one_line_error(proc, "standard output")
    assert "Exception ignored" not in proc.stderr


def small_files(limit: int):
    """Run a child whose files cannot grow past `limit` bytes: writes fail as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as ENOSPC would
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_during_training_is_one_line_and_keeps_the_last_checkpoint(corpus_file: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "picogpt.train", "--dataset", "text", "--data", str(corpus_file), "--out", str(out),
           "--max-iters", "4", "--eval-interval", "2", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=small_files(60_000))
    assert_one_line_error(proc, "ckpt.pt failed")
    assert not list(out.glob(".ckpt-*.tmp"))


def test_a_full_disk_during_export_is_one_line_and_keeps_the_earlier_file(tiny_ckpt: Path, exported: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(exported.read_bytes())  # an earlier export, to be replaced
    cmd = [sys.executable, "-m", "picogpt.export", str(tiny_ckpt), "-o", str(out), "--no-verify"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=small_files(20_000))
    assert_one_line_error(proc, "-o")
    assert out.read_bytes() == exported.read_bytes() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_full_disk_under_the_datasets_cache_is_one_line_and_writes_no_bin(tmp_path: Path) -> None:
    from test_data import wiki_rows, write_parquet

    rows = [{**r, "text": r["text"] * 60} for r in wiki_rows(20)]  # the cache outgrows the limit below
    write_parquet(tmp_path / "a.parquet", rows)
    cmd = [sys.executable, "-m", "picogpt.data.prepare", "wikipedia", "--data-files", str(tmp_path / "a.parquet"),
           "--out", str(tmp_path / "o"), "--num-proc", "1", "--val-percent", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=small_files(100_000),
                          env={**os.environ, "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(proc, "datasets cache")
    assert not list((tmp_path / "o").glob("*.bin*"))


# ---- 5. content is checked, not trusted ----------------------------------------------------------------------


def bad_state(kind: str, state: dict) -> str:
    """Damage a picogpt checkpoint's state in one way; returns what the error line must name."""
    sd = state["model"]
    changes = {
        "config-as-string": (lambda: state.update(config=json.dumps(state["config"])), "'config' is a str"),
        "step-as-string": (lambda: state.update(step="30"), "'step' is a str"),
        "model-as-int": (lambda: state.update(model=7), "'model' is a int"),
        "wte-1d": (lambda: sd.update({"transformer.wte.weight": sd["transformer.wte.weight"][0]}), "ckpt.pt"),
        "tokenizer-size": (lambda: state.update(tokenizer=json.dumps(
            {**json.loads(state["tokenizer"]), "vocab": json.loads(state["tokenizer"])["vocab"] + ["x", "y"]})),
            "90 ids"),
        "unknown-dataset": (lambda: state["data_config"].update(dataset="shakespeare2"), "'shakespeare2'"),
        "nan-weight": (lambda: sd["lm_head.weight"].view(-1).__setitem__(3, float("nan")), "NaN or Inf"),
        "inf-weight": (lambda: sd["transformer.h.0.mlp.c_fc.weight"].view(-1).__setitem__(0, float("inf")),
                       "NaN or Inf"),
        "n_head-as-float": (lambda: state["config"].update(n_head=2.0), "n_head"),
    }
    change, fragment = changes[kind]
    change()
    return fragment


KINDS = ["config-as-string", "step-as-string", "model-as-int", "wte-1d", "tokenizer-size", "unknown-dataset",
         "nan-weight", "inf-weight", "n_head-as-float"]


@pytest.mark.parametrize("cli", ["export", "eval", "resume"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_checkpoint_is_one_line_in_every_reader(kind: str, cli: str, tiny_ckpt: Path,
                                                          tmp_path: Path) -> None:
    if kind == "unknown-dataset" and cli == "export":
        pytest.skip("export reads the data settings only to find verification text: covered by eval and resume")
    state = torch.load(tiny_ckpt, weights_only=False)
    fragment = bad_state(kind, state)
    ckpt = tmp_path / "run" / "ckpt.pt"
    ckpt.parent.mkdir()
    torch.save(state, ckpt)
    before = ckpt.read_bytes()
    if cli == "export":
        proc = run_main(export_main, str(ckpt), "-o", str(tmp_path / "m.onnx"), "--no-verify")
    elif cli == "eval":
        proc = run_main(eval_main, str(ckpt))
    else:
        proc = run_main(train_main, "--out", str(ckpt.parent), "--resume", "--quiet", "--no-report")
    assert_one_line_error(proc, fragment)
    assert ckpt.read_bytes() == before and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind, fragment", [("n_head-0", "n_head"), ("lm_head-untied", "lm_head"),
                                            ("wte-1d", "2-D"), ("nan", "NaN or Inf")])
@pytest.mark.parametrize("cli", ["export", "eval"])
def test_a_damaged_nanogpt_checkpoint_is_one_line(kind: str, fragment: str, cli: str, random_model,
                                                  tmp_path: Path) -> None:
    sd = {k: v.clone() for k, v in random_model.state_dict().items()}
    args = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 17, "vocab_size": 88, "bias": True}
    if kind == "n_head-0":
        args["n_head"] = 0
    elif kind == "lm_head-untied":
        sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    elif kind == "wte-1d":
        sd["transformer.wte.weight"] = sd["transformer.wte.weight"][0]
    else:
        sd["transformer.wpe.weight"][0, 0] = float("nan")
    ckpt = tmp_path / "nano.pt"
    torch.save({"model": sd, "model_args": args, "iter_num": 5}, ckpt)
    proc = (run_main(export_main, str(ckpt), "-o", str(tmp_path / "m.onnx"), "--no-verify") if cli == "export"
            else run_main(eval_main, str(ckpt)))
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "m.onnx").exists()


def wiki_file(tmp: Path, kind: str) -> Path:
    from test_data import wiki_rows, write_parquet

    rows = wiki_rows(4)
    if kind == "parquet-text-int":
        path = tmp / "w.parquet"
        write_parquet(path, [{**r, "text": i} for i, r in enumerate(rows)])
        return path
    bad = {"jsonl-id-list": {**rows[1], "id": [1, 2]}, "jsonl-text-int": {**rows[1], "text": 12345},
           "jsonl-not-an-object": [rows[1]["id"], rows[1]["text"]]}[kind]
    path = tmp / "w.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], bad, *rows[2:]]))
    return path


@pytest.mark.parametrize("cli", ["train", "prepare"])
@pytest.mark.parametrize("kind", ["jsonl-id-list", "jsonl-text-int", "jsonl-not-an-object", "parquet-text-int"])
def test_articles_of_the_wrong_type_are_one_line(kind: str, cli: str, tmp_path: Path) -> None:
    path = wiki_file(tmp_path, kind)
    out = tmp_path / "o"
    if cli == "train":
        proc = run_main(train_main, "--dataset", "wikipedia", "--data-files", str(path), "--out", str(out), *FAST)
    else:
        proc = run_main(prepare_main, "wikipedia", "--data-files", str(path), "--out", str(out))
    assert_one_line_error(proc, path.name)
    assert not (out / "ckpt.pt").exists() and not (out / "train.bin").exists()


@pytest.mark.parametrize("fingerprint", ["{not json", "[1, 2]", '{"greedy": 5}', '"ROMEO"'])
def test_verify_with_a_damaged_fingerprint_is_one_line(fingerprint: str, exported: Path, tmp_path: Path) -> None:
    from test_reliability import damaged

    path = damaged(exported, tmp_path, fingerprint=fingerprint)
    proc = run_main(runtime_main, "-m", str(path), "--verify")
    assert_one_line_error(proc, "fingerprint")


def test_a_prepared_bin_of_unknown_characters_warns_as_text_does(tmp_path: Path) -> None:
    from picogpt.data import DataConfig, open_data
    from picogpt.tokenizer import CharTokenizer

    ids = np.asarray(CharTokenizer().encode("the king speaks. " * 400), dtype=np.uint8)
    ids[::10] = 0  # <?>: characters that were outside the vocabulary when the file was prepared
    ids.tofile(tmp_path / "train.bin")
    warned: list[str] = []
    open_data(DataConfig("text", str(tmp_path / "train.bin")), CharTokenizer(), 32, 0, warn=warned.append)
    assert len(warned) == 1 and f"{int((ids == 0).sum()):,} characters are not in the vocabulary" in warned[0]


def test_data_is_stored_resolved_and_resume_warns_when_it_changed(corpus_file: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "text.txt").write_text(corpus_file.read_text())
    args = ["--dataset", "text", "--data", "text.txt", "--out", str(tmp_path / "run"), "--eval-interval", "2", *FAST]
    proc = subprocess.run([sys.executable, "-m", "picogpt.train", *args, "--max-iters", "2"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)
    assert state["data_config"]["path"] == str((work / "text.txt").resolve())
    with (work / "text.txt").open("a") as f:
        f.write("A line added since.\n")
    proc = run_cli("picogpt.train", *[a if a != "text.txt" else str(work / "text.txt") for a in args],
                   "--max-iters", "4", "--resume")  # from another folder: the stored path still finds the file
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("warning:") == 1 and "size changed" in proc.stderr
