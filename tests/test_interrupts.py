"""Interrupted work: a second signal during a save, Ctrl-C while several samples are generated, a long prompt's
prefill progress, a killed `picogpt-prepare`; and a sweep of bad inputs over the six CLIs (never a traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CONFIG, run_cli


def test_a_second_signal_during_the_save_waits_for_it() -> None:
    from picogpt.train.runner import Stopper

    stopper = Stopper()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.requested and stopper.signum == signal.SIGTERM
        stopper.saving = True
        os.kill(os.getpid(), signal.SIGINT)  # during the save: no exception, the save goes on
        assert stopper.signum == signal.SIGTERM
        stopper.saving = False
        with pytest.raises(KeyboardInterrupt):  # outside a save, a second signal aborts at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stopper.restore()


def test_ctrl_c_during_several_samples_prints_what_each_has(exported: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "picogpt.runtime", "-m", str(exported), "--prompt", "a",
                             "--num-samples", "3", "--max-new-tokens", "100000000", "--seed", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    seen = ""
    while "samples: " not in seen and time.time() < deadline:  # the progress line: generation is under way
        seen += proc.stderr.read(1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    parts = out.split("--- sample ")
    assert [p.split(" ")[0] for p in parts[1:]] == ["1", "2", "3"] and "(interrupted)" in parts[1]
    assert all(len(p.split("---\n", 1)[1]) > 10 for p in parts[1:])  # each kept the text it had


class Clock:
    """A stand-in for time.perf_counter that only moves when the decoder works."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SlowDecoder:
    """A decoder whose every feed takes one second of `clock`: a long prefill without a large model."""

    config = TINY_CONFIG

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def new_state(self, batch: int = 1) -> list[int]:
        return []

    def feed(self, ids: np.ndarray, state: list[int]) -> np.ndarray:
        self.clock.now += 1.0
        state.append(ids.shape[1])
        return np.zeros((ids.shape[0], self.config.vocab_size), np.float32)


def test_a_long_prompt_is_prefilled_in_windows_with_progress(capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from picogpt import generation
    from picogpt.sampling import Sampler, SamplingConfig

    clock = Clock()
    monkeypatch.setattr(generation, "time", clock)
    decoder, stats = SlowDecoder(clock), generation.GenerationStats()
    prompt = np.ones((1, 30 * TINY_CONFIG.context_len + 3), np.int64)
    state: list[int] = []
    sampler = Sampler(SamplingConfig(temperature=0), TINY_CONFIG.vocab_size)
    assert len(list(generation.generate_ids(decoder, prompt, 3, sampler, state, stats, progress=True))) == 3
    assert state == [TINY_CONFIG.context_len] * 30 + [3, 1, 1]  # window-sized chunks, then one id a step
    assert "prefill: " in capsys.readouterr().err
    # 31 prefill feeds are the prefill's time; the 2 feeds between the 3 new ids are the decode's
    assert (stats.prefill_s, stats.decode_s, stats.ms_per_token) == (31.0, 2.0, 1000.0)


def test_a_killed_prepare_leaves_no_half_memmap(tmp_path: Path) -> None:
    from picogpt.data.prepare import write_memmap

    class Interrupted:
        """A dataset whose second shard is never read: Ctrl-C arrives while the memmap is written."""

        def __init__(self) -> None:
            self.data = {"len": [5, 5]}

        def __len__(self) -> int:
            return 2

        def __getitem__(self, key: str) -> list[int]:
            return self.data[key]

        def shard(self, num_shards: int, index: int, contiguous: bool) -> Interrupted:
            if index == 1:
                raise KeyboardInterrupt
            return self

        def with_format(self, kind: str) -> dict:
            return {"ids": [np.arange(5, dtype=np.uint8)]}

    (tmp_path / "train.bin").write_bytes(b"previous good output")
    with pytest.raises(KeyboardInterrupt):
        write_memmap(Interrupted(), tmp_path / "train.bin", shards=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin"]
    assert (tmp_path / "train.bin").read_bytes() == b"previous good output"


def sweep_cases(tmp: Path, exported: Path) -> list[tuple[str, list[str]]]:
    folder = tmp / "folder"
    folder.mkdir()
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(os.urandom(300))
    missing = str(tmp / "missing")
    return [
        ("picogpt.train", ["--dataset", "text", "--data", str(folder), "--out", str(tmp / "o1")]),
        ("picogpt.train", ["--dataset", "text", "--data", missing, "--out", str(tmp / "o2")]),
        ("picogpt.train", ["--out", str(garbage)]),
        ("picogpt.train", ["--resume", "--out", str(tmp / "nothing-here")]),
        ("picogpt.train", ["--model", "huge", "--out", str(tmp / "o3")]),
        ("picogpt.train", ["--lr", "nan", "--out", str(tmp / "o4")]),
        ("picogpt.train.evaluate", [str(garbage)]),
        ("picogpt.train.evaluate", [str(folder)]),
        ("picogpt.export", [str(garbage), "-o", str(tmp / "m.onnx")]),
        ("picogpt.export", [missing, "-o", str(tmp / "m.onnx")]),
        ("picogpt.export", [str(exported), "-o", str(tmp / "m.onnx")]),
        ("picogpt.runtime", ["-m", str(garbage), "--prompt", "a"]),
        ("picogpt.runtime", ["-m", str(folder), "--prompt", "a"]),
        ("picogpt.runtime", ["-m", str(exported), "--prompt", "a", "--top-p", "7"]),
        ("picogpt.runtime", ["-m", str(exported), "--prompt", "a", "--threads", "0"]),
        ("picogpt.bench", [str(garbage), "--quick"]),
        ("picogpt.bench", [missing, "--quick"]),
        ("picogpt.bench", ["quality", "--minutes", "-1"]),
        ("picogpt.bench", ["quality", "--onnx", str(garbage)]),
        ("picogpt.data.prepare", ["wikipedia", "--data-files", str(tmp / "none-*.parquet"), "--out", str(tmp / "p")]),
        ("picogpt.data.prepare", ["wikipedia", "--data-files", str(garbage), "--out", str(garbage)]),
    ]


def test_no_cli_answers_bad_input_with_a_traceback(exported: Path, tmp_path: Path) -> None:
    failures = []
    for module, args in sweep_cases(tmp_path, exported):
        proc = run_cli(module, *args, timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "Error:"))]
        if proc.returncode == 0 or "Traceback" in proc.stderr or len(lines) != 1:
            failures.append(f"{module} {' '.join(args)} -> {proc.returncode}: {proc.stderr[-300:]}")
    assert not failures, "\n".join(failures)
