"""Data sources: local text, tinyshakespeare discovery/download checks, Wikipedia via `datasets`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run_main
from picogpt.data import text as D
from picogpt.data import wikipedia as W
from picogpt.errors import PicoError
from picogpt.tokenizer import CharTokenizer

TOK = CharTokenizer()


def test_token_data_split_and_shifted_batches(corpus_file: Path) -> None:
    td, unknown = D.load_token_data(str(corpus_file), TOK, seq_len=48, name="corpus")
    assert unknown == 0
    n = len(corpus_file.read_text())
    assert len(td.train) + len(td.val) == n and len(td.val) == int(n * 0.1)
    x, y = td.batch("train", 5, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 48)
    assert (x[:, 1:] == y[:, :-1]).all()
    joined = TOK.decode(np.concatenate([x[0], y[0, -1:]]).tolist())
    assert joined in corpus_file.read_text().lower()


@pytest.mark.parametrize("content,fragment", [(b"", "empty"), (b"\x00\x01\x02binary", "binary"),
                                              (b"\xff\xfe\xfa bad", "utf-8")])
def test_bad_text_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(PicoError, match=f"(?i){fragment}"):
        D.read_text_file(p)
    with pytest.raises(PicoError, match="not found"):
        D.read_text_file(tmp_path / "missing.txt")


def test_too_short_for_one_sequence(tmp_path: Path) -> None:
    p = tmp_path / "short.txt"
    p.write_text("to be or not to be\n" * 5)
    with pytest.raises(PicoError, match="too short"):
        D.load_token_data(str(p), TOK, seq_len=128, name="short")


def test_tinyshakespeare_from_env_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "env"
    folder.mkdir()
    (folder / D.TINYSHAKESPEARE_FILE).write_text("anything")
    monkeypatch.setenv("PICOGPT_DATA", str(folder))
    assert D.find_tinyshakespeare(download=False) == folder / D.TINYSHAKESPEARE_FILE
    monkeypatch.delenv("PICOGPT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(PicoError, match="--data"):
        D.find_tinyshakespeare(download=False)


def test_offline_download_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PICOGPT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")  # nothing listens there
    with pytest.raises(PicoError, match="pass --data"):
        D.find_tinyshakespeare()
    assert not (tmp_path / "cache" / D.TINYSHAKESPEARE_FILE).exists()


def test_download_verifies_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PICOGPT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake = tmp_path / "fake.txt"
    fake.write_text("not shakespeare")
    monkeypatch.setattr(D, "TINYSHAKESPEARE_URL", fake.as_uri())
    with pytest.raises(PicoError, match="damaged"):
        D.find_tinyshakespeare()


@pytest.mark.skipif(not os.environ.get("PICOGPT_DATA"), reason="needs PICOGPT_DATA with tinyshakespeare.txt")
def test_real_tinyshakespeare_verifies() -> None:
    path = D.find_tinyshakespeare(download=False)
    assert len(D.read_text_file(path)) == D.TINYSHAKESPEARE_CHARS
    assert D._sha256(path) == D.TINYSHAKESPEARE_SHA256


def wiki_rows(n: int = 60) -> list[dict]:
    from conftest import make_corpus

    return [{"id": str(1000 + i), "url": f"https://en.wikipedia.org/wiki?curid={1000 + i}", "title": f"Article {i}",
             "text": make_corpus(300 + 40 * i, seed=i)} for i in range(n)]


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_wikipedia_local_files_stream(tmp_path: Path, fmt: str) -> None:
    rows = wiki_rows()
    if fmt == "parquet":
        write_parquet(tmp_path / "part-0.parquet", rows[:30])
        write_parquet(tmp_path / "part-1.parquet", rows[30:])
        pattern = str(tmp_path / "*.parquet")
    else:
        (tmp_path / "wiki.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        pattern = str(tmp_path / "*.jsonl")
    wd = W.WikipediaData(TOK, seq_len=200, seed=0, data_files=pattern, val_percent=20, buffer_size=16)
    x, y = wd.batch("train", 6, np.random.default_rng(0))
    assert x.shape == (6, 200) and (x[:, 1:] == y[:, :-1]).all()
    val_ids = {r["id"] for r in rows if W.is_val_article(r["id"], 20)}
    assert 0 < len(val_ids) < len(rows)
    # every sequence lies inside a single article: its text appears verbatim in one of them
    val_texts = [r["text"].lower() for r in rows if r["id"] in val_ids]
    vx, vy = wd.batch("val", 4, np.random.default_rng(1))
    for row, last in zip(vx, vy[:, -1]):
        s = TOK.decode(row.tolist() + [int(last)])
        assert any(s in t for t in val_texts)
    vx2, _ = wd.batch("val", 4, np.random.default_rng(1))
    assert (vx == vx2).all()  # fixed validation pool


def test_wikipedia_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(PicoError, match="matched no files"):
        W.open_article_stream("x", None, str(tmp_path / "*.parquet"))
    write_parquet(tmp_path / "w.parquet", [{"id": "1", "body": "no text column"}])
    with pytest.raises(PicoError, match="columns"):
        W.open_article_stream("x", None, str(tmp_path / "w.parquet"))


def test_prepare_forks_its_workers_without_a_python_sigterm_handler(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`Pool.terminate` stops the tokenizing workers with SIGTERM. A Python handler inherited by a child that
    is still being forked loses it, and the pool then waits on that worker forever. SIGTERM unwinds only
    while the memmaps are written."""
    import signal

    import datasets

    from picogpt.data import prepare as P

    seen = []
    for name in ("map", "filter"):
        real = getattr(datasets.Dataset, name)

        def spy(self, *args, _real=real, **kwargs):
            seen.append(signal.getsignal(signal.SIGTERM))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(datasets.Dataset, name, spy)
    real_write = P.write_memmap

    def write(*args, **kwargs):
        with pytest.raises(SystemExit) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.value.code == 143
        return real_write(*args, **kwargs)

    monkeypatch.setattr(P, "write_memmap", write)
    write_parquet(tmp_path / "a.parquet", wiki_rows(20))
    before = signal.getsignal(signal.SIGTERM)
    proc = run_main(P.main, "wikipedia", "--data-files", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "out"),
                    "--val-percent", "20", "--num-proc", "2")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "val.bin").stat().st_size > 0
    assert len(seen) >= 3 and all(h == before for h in seen), seen
    assert signal.getsignal(signal.SIGTERM) == before


def test_wikipedia_from_an_unreachable_hub_is_one_line(tmp_path: Path) -> None:
    """The hub client retries a refused connection with back-off and logs each retry: the user sees one line."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens
    proc = subprocess.run([sys.executable, "-m", "picogpt.data.prepare", "wikipedia", "--out", str(tmp_path / "o"),
                           "--num-proc", "1"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(proc.stderr.splitlines()) == 1 and "wikimedia/wikipedia" in proc.stderr, proc.stderr
    assert not list((tmp_path / "o").glob("*.bin*"))
