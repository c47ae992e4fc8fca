"""Training data: a local text file or tinyshakespeare (downloaded once, cached, verified),
and Wikipedia streamed with Hugging Face `datasets` in bounded memory.

Everything here is numpy; `picogpt.train` turns batches into tensors. A batch is
`x, y` of shape [B, N] with y = x shifted by one character, N = windows * context_len.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from picogpt.errors import PicoError
from picogpt.tokenizer import CharTokenizer

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_CHARS = 1_115_394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_FILE = "tinyshakespeare.txt"


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
                 val_ids: np.ndarray | None = None) -> None:
        if val_ids is None:
            n_val = int(len(ids) * val_fraction)
            ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        self.train, self.val = ids, val_ids
        self.seq_len = seq_len
        need = seq_len + 1
        if len(self.train) < need or len(self.val) < need:
            raise PicoError(
                f"{name} is too short: {len(self.train):,} train / {len(self.val):,} val characters, "
                f"but one training sequence needs {need:,} in each (lower --seq-windows or use more text)"
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

    def batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        data = self.train if split == "train" else self.val
        starts = rng.integers(0, len(data) - self.seq_len, size=batch_size)
        rows = np.asarray(data[starts[:, None] + np.arange(self.seq_len + 1)], dtype=np.int64)
        return rows[:, :-1], rows[:, 1:]


def open_ids(path: Path, tokenizer: CharTokenizer) -> np.ndarray:
    """Memory-map a prepared .bin of uint8 ids, refusing an empty file or ids outside the vocabulary."""
    if path.stat().st_size == 0:
        raise PicoError(f"{path} is empty: prepare it again with picogpt-prepare")
    ids = np.memmap(path, dtype=np.uint8, mode="r")
    top = max(int(ids[i : i + 2**26].max()) for i in range(0, len(ids), 2**26))  # in chunks: bounded memory
    if top >= tokenizer.vocab_size:
        raise PicoError(f"{path} holds id {top}, outside this tokenizer's {tokenizer.vocab_size} ids: "
                        "it is not a picogpt-prepare file (give a text file, or prepare it again)")
    return ids


def load_token_data(path: str | None, tokenizer: CharTokenizer, seq_len: int, name: str) -> tuple[TokenData, int]:
    """Text file (or tinyshakespeare, found or downloaded) -> TokenData, unknown-char count.

    A `.bin` file of uint8 ids is memory-mapped instead of re-encoded; `picogpt-prepare` writes
    `train.bin` with a `val.bin` beside it (otherwise the last 10% of the file is validation).
    """
    if path is not None and str(path).endswith(".bin"):
        check_data_file(Path(path))
        val_path = Path(path).with_name("val.bin")
        has_val = Path(path).name == "train.bin" and val_path.is_file()
        val = open_ids(val_path, tokenizer) if has_val else None
        return TokenData(open_ids(Path(path), tokenizer), seq_len, name=name, val_ids=val), 0
    if path is None:
        path = str(find_tinyshakespeare())
    ids, unknown = encode_array(read_text_file(path), tokenizer)
    return TokenData(ids, seq_len, name=str(path)), unknown


# ---- Wikipedia, streamed ---------------------------------------------------------------------

WIKI_DEFAULT_NAME = "wikimedia/wikipedia"
WIKI_DEFAULT_CONFIG = "20231101.en"


def is_val_article(article_id: str, val_percent: float) -> bool:
    """Deterministic train/val split by article: a stable hash of the id, not the stream order."""
    return zlib.crc32(str(article_id).encode("utf-8")) % 10_000 < val_percent * 100


def check_article_files(files: list[str]) -> None:
    """Refuse a damaged file of a local Wikipedia set before training starts (streaming would only
    reach it hundreds of steps in): parquet footers must read, JSON lines must parse."""
    import json

    for name in files:
        try:
            if name.endswith(".parquet"):
                import pyarrow.parquet as pq

                pq.read_metadata(name)
            else:
                with open(name, encoding="utf-8") as f:
                    try:  # JSON lines, one article each ...
                        for line in f:
                            if line.strip():
                                json.loads(line)
                    except ValueError:
                        if name.endswith(".jsonl"):
                            raise
                        f.seek(0)
                        json.load(f)  # ... or one JSON document
        except Exception as exc:  # pyarrow, json and unicode errors: all mean the same to the user
            raise PicoError(f"--data-files: {name} is damaged ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); fix or remove it") from None


def open_article_stream(name: str, config: str | None, data_files: str | None, streaming: bool = True,
                        num_proc: int | None = None):
    """The articles (`id, url, title, text`) as a streaming `datasets.IterableDataset`.

    With `data_files` (a glob of local .parquet / .json / .jsonl files of Wikipedia's schema)
    the same code path reads them instead of the hub. `streaming=False` (for `picogpt-prepare`)
    downloads and caches a map-style `Dataset` instead, `num_proc` processes at a time.
    """
    try:
        import datasets
    except ImportError:
        raise PicoError("the wikipedia dataset needs the `datasets` package: pip install 'picogpt[train]'") from None
    datasets.logging.set_verbosity_error()
    how = {"streaming": True} if streaming else {"streaming": False, "num_proc": num_proc}
    try:
        if data_files:
            import glob

            files = sorted(glob.glob(data_files))
            if not files:
                raise PicoError(f"--data-files matched no files: {data_files}")
            check_article_files(files)
            builder = "parquet" if files[0].endswith(".parquet") else "json"
            ds = datasets.load_dataset(builder, data_files=files, split="train", **how)
        else:
            ds = datasets.load_dataset(name, config, split="train", **how)
    except PicoError:
        raise
    except Exception as exc:  # network, missing config, schema: one line for the user
        raise PicoError(f"could not open dataset {data_files or name}: {str(exc).splitlines()[0][:200]}") from None
    missing = {"id", "text"} - set(ds.column_names or ["id", "text"])
    if missing:
        raise PicoError(f"dataset lacks Wikipedia's columns {sorted(missing)} (need id, url, title, text)")
    return ds


class WikipediaData:
    """Sequences of seq_len+1 characters cut at random offsets inside articles, in bounded memory.

    Articles stream in order; each long-enough article yields up to `per_article` sequences
    into a fixed-size shuffle buffer, so memory stays at about buffer * seq_len bytes whatever
    the corpus size. Validation uses fixed sequences from the held-out articles.
    """

    def __init__(
        self,
        tokenizer: CharTokenizer,
        seq_len: int,
        seed: int,
        name: str = WIKI_DEFAULT_NAME,
        config: str | None = WIKI_DEFAULT_CONFIG,
        data_files: str | None = None,
        val_percent: float = 1.0,
        buffer_size: int = 2048,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.tokenizer, self.seq_len, self.seed = tokenizer, seq_len, seed
        self.source = (name, config, data_files)
        self.shard = shard  # (rank, world): each rank streams a disjoint part of the training articles
        self.val_percent, self.buffer_size = val_percent, buffer_size
        self.rng = np.random.default_rng(seed)
        self._train_iter = self._sequences(val=False, rng=np.random.default_rng(seed + 1))
        self._val_cache: list[np.ndarray] = []

    def _sequences(self, val: bool, rng: np.random.Generator) -> Iterator[np.ndarray]:
        need = self.seq_len + 1
        while True:  # epochs
            produced = 0
            stream = open_article_stream(*self.source)
            if not val and self.shard[1] > 1:
                from datasets.distributed import split_dataset_by_node

                # whole files per rank when they divide evenly, else every world-th article
                stream = split_dataset_by_node(stream, rank=self.shard[0], world_size=self.shard[1])
            for article in stream:
                if is_val_article(article["id"], self.val_percent) != val:
                    continue
                text = article.get("text") or ""
                if len(text) < need:
                    continue
                ids = np.asarray(self.tokenizer.encode(text), dtype=np.uint8)
                for _ in range(max(1, min(8, len(ids) // need))):
                    start = int(rng.integers(0, len(ids) - need + 1))
                    produced += 1
                    yield ids[start : start + need].astype(np.int64)
            if produced == 0:
                split = "validation" if val else "training"
                raise PicoError(f"no {split} article is longer than one training sequence ({need} chars)")

    def _train_rows(self, n: int) -> np.ndarray:
        buf: list[np.ndarray] = getattr(self, "_buffer", [])
        while len(buf) < self.buffer_size:
            buf.append(next(self._train_iter))
            if len(buf) >= self.buffer_size or len(buf) >= 4 * n:
                break
        picks = sorted(self.rng.choice(len(buf), size=min(n, len(buf)), replace=False), reverse=True)
        rows = [buf.pop(i) for i in picks]
        while len(rows) < n:  # tiny corpora: the buffer holds fewer than a batch
            rows.append(next(self._train_iter))
        self._buffer = buf
        return np.stack(rows)

    def batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if split == "train":
            rows = self._train_rows(batch_size)
        else:
            # a fixed pool of held-out sequences; `rng` picks among them deterministically
            if not self._val_cache:
                it = self._sequences(val=True, rng=np.random.default_rng(self.seed + 2))
                self._val_cache = [next(it) for _ in range(max(64, batch_size))]
            rows = np.stack([self._val_cache[i] for i in rng.integers(0, len(self._val_cache), size=batch_size)])
        return rows[:, :-1], rows[:, 1:]


def open_data(
    dataset: str,
    tokenizer: CharTokenizer,
    seq_len: int,
    seed: int,
    data_path: str | None = None,
    data_files: str | None = None,
    wiki_name: str = WIKI_DEFAULT_NAME,
    wiki_config: str | None = WIKI_DEFAULT_CONFIG,
    val_percent: float = 1.0,
    warn=print,
    shard: tuple[int, int] = (0, 1),
) -> TokenData | WikipediaData:
    """The one place that turns the CLI's data flags into a batch source.

    `shard = (rank, world)`: under torchrun each rank trains on a disjoint part of the data.
    """
    if dataset == "wikipedia":
        return WikipediaData(tokenizer, seq_len, seed, wiki_name, wiki_config, data_files, val_percent,
                             shard=shard)
    if dataset == "text" and data_path is None:
        raise PicoError("--dataset text needs --data PATH")
    data, unknown = load_token_data(data_path, tokenizer, seq_len, dataset)
    if unknown:
        warn(f"warning: {unknown:,} characters are not in the vocabulary and were mapped to <?>")
    data.shard(*shard)
    return data
