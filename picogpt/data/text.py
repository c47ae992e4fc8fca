"""Character text for training: a local file or tinyshakespeare (downloaded once, cached, verified),
and the uint8 memmaps of `picogpt-prepare`. Everything here is numpy."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from picogpt.errors import PicoError
from picogpt.tokenizer import UNKNOWN_ID, CharTokenizer

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_CHARS = 1_115_394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_FILE = "tinyshakespeare.txt"
TOO_SHORT_HINT = "use more text"


def cache_dir() -> Path:
    """Where downloads are kept: $XDG_CACHE_HOME/picogpt or ~/.cache/picogpt."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "picogpt"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_tinyshakespeare(download: bool = True) -> Path:
    """$PICOGPT_DATA/tinyshakespeare.txt, else the cache, else download into the cache (verified)."""
    env = os.environ.get("PICOGPT_DATA")
    if env:
        candidate = Path(env) / TINYSHAKESPEARE_FILE
        if candidate.is_file():
            return candidate
    cached = cache_dir() / TINYSHAKESPEARE_FILE
    if cached.is_file() and _sha256(cached) == TINYSHAKESPEARE_SHA256:
        return cached
    if not download:
        raise PicoError("tinyshakespeare not found: pass --data PATH or set PICOGPT_DATA to its folder")
    return _download_tinyshakespeare(cached)


def _download_tinyshakespeare(dest: Path) -> Path:
    print(f"downloading tinyshakespeare from {TINYSHAKESPEARE_URL} ...", flush=True)
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as resp:
            payload = resp.read()
    except OSError as exc:
        raise PicoError(
            f"could not download tinyshakespeare ({exc}); pass --data PATH to a local copy "
            "or set PICOGPT_DATA to the folder holding tinyshakespeare.txt"
        ) from None
    text = payload.decode("utf-8", errors="replace")
    digest = hashlib.sha256(payload).hexdigest()
    if len(text) != TINYSHAKESPEARE_CHARS or digest != TINYSHAKESPEARE_SHA256:
        raise PicoError(f"downloaded tinyshakespeare is damaged ({len(text)} chars, sha256 {digest[:12]}...)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        tmp.write(payload)
    os.replace(tmp.name, dest)  # atomic: a half-written cache file is never seen
    return dest


def check_data_file(p: Path) -> None:
    """Refuse, in one line, a path that is not a regular file: missing, a folder, a FIFO or a device."""
    if not p.exists():
        raise PicoError(f"data file not found: {p}")
    if not p.is_file():
        kind = "a folder" if p.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise PicoError(f"data file {p} is {kind}: give a text file or a prepared .bin")


def read_text_file(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file, refusing missing, empty and binary files with a clear message."""
    p = Path(path)
    check_data_file(p)
    raw = p.read_bytes()
    if not raw.strip():
        raise PicoError(f"data file is empty: {p}")
    if b"\x00" in raw[:65536]:
        raise PicoError(f"data file looks binary, not UTF-8 text: {p}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PicoError(f"data file is not valid UTF-8 text ({p}: byte {exc.start})") from None


def encode_array(text: str, tokenizer: CharTokenizer) -> tuple[np.ndarray, int]:
    """Text -> uint8 id array (all ids < 256) and the number of unknown characters."""
    enc = tokenizer.encode_counted(text)
    return np.asarray(enc.ids, dtype=np.uint8), enc.unknown


class TokenData:
    """An in-memory (or memmapped) id array split 90% train / 10% val (or separate train and val
    arrays), sampled at random offsets."""

    def __init__(self, ids: np.ndarray, seq_len: int, val_fraction: float = 0.1, name: str = "text",
                 val_ids: np.ndarray | None = None, hint: str = TOO_SHORT_HINT) -> None:
        if val_ids is None:
            n_val = int(len(ids) * val_fraction)
            ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        self.train, self.val = ids, val_ids
        self.seq_len = seq_len
        need = seq_len + 1
        if len(self.train) < need or len(self.val) < need:
            raise PicoError(
                f"{name} is too short: {len(self.train):,} train / {len(self.val):,} val characters, "
                f"but one sequence needs {need:,} in each ({hint})"
            )

    def shard(self, rank: int, world: int) -> None:
        """Keep only this rank's contiguous 1/world of the training tokens (validation is shared)."""
        if world <= 1:
            return
        size = len(self.train) // world
        if size < self.seq_len + 1:
            raise PicoError(f"{len(self.train):,} training characters cannot give {world} ranks a shard of at least "
                            f"one sequence ({self.seq_len + 1:,}); use more text or fewer processes")
        self.train = self.train[rank * size : (rank + 1) * size]

    def batch(self, split: str, batch_size: int, rng: np.random.Generator,
              seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` sequences of `seq_len` (default: the training length) at random offsets of a split."""
        data = self.train if split == "train" else self.val
        n = seq_len or self.seq_len
        if len(data) < n + 1:
            raise PicoError(f"the {split} split has {len(data):,} characters; a sequence of {n:,} needs more")
        starts = rng.integers(0, len(data) - n, size=batch_size)
        rows = np.asarray(data[starts[:, None] + np.arange(n + 1)], dtype=np.int64)
        return rows[:, :-1], rows[:, 1:]


def open_ids(path: Path, tokenizer: CharTokenizer) -> tuple[np.ndarray, int]:
    """Memory-map a prepared .bin of uint8 ids, refusing an empty file or ids outside the vocabulary; returns the
    ids and how many are <?> (characters that were outside the vocabulary when the file was prepared)."""
    if path.stat().st_size == 0:
        raise PicoError(f"{path} is empty: prepare it again with picogpt-prepare")
    ids = np.memmap(path, dtype=np.uint8, mode="r")
    top, unknown = 0, 0
    for i in range(0, len(ids), 2**26):  # in chunks: bounded memory
        chunk = np.asarray(ids[i : i + 2**26])
        top, unknown = max(top, int(chunk.max())), unknown + int(np.count_nonzero(chunk == UNKNOWN_ID))
    if top >= tokenizer.vocab_size:
        raise PicoError(f"{path} holds id {top}, outside this tokenizer's {tokenizer.vocab_size} ids: "
                        "it is not a picogpt-prepare file (give a text file, or prepare it again)")
    return ids, unknown


def load_token_data(path: str | None, tokenizer: CharTokenizer, seq_len: int, name: str,
                    hint: str = TOO_SHORT_HINT) -> tuple[TokenData, int]:
    """Text file (or tinyshakespeare, found or downloaded) -> TokenData, unknown-char count.

    A `.bin` file of uint8 ids is memory-mapped instead of re-encoded; `picogpt-prepare` writes
    `train.bin` with a `val.bin` beside it (otherwise the last 10% of the file is validation).
    """
    if path is not None and str(path).endswith(".bin"):
        check_data_file(Path(path))
        val_path = Path(path).with_name("val.bin")
        has_val = Path(path).name == "train.bin" and val_path.is_file()
        val, val_unknown = open_ids(val_path, tokenizer) if has_val else (None, 0)
        ids, unknown = open_ids(Path(path), tokenizer)
        return TokenData(ids, seq_len, name=name, val_ids=val, hint=hint), unknown + val_unknown
    if path is None:
        path = str(find_tinyshakespeare())
    ids, unknown = encode_array(read_text_file(path), tokenizer)
    return TokenData(ids, seq_len, name=str(path), hint=hint), unknown
