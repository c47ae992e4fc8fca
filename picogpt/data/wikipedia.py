"""Wikipedia streamed with Hugging Face `datasets` in bounded memory (or local files of its schema)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping

import numpy as np

from picogpt.errors import PicoError, os_cause
from picogpt.tokenizer import CharTokenizer

# ---- Wikipedia, streamed ---------------------------------------------------------------------

WIKI_DEFAULT_NAME = "wikimedia/wikipedia"
WIKI_DEFAULT_CONFIG = "20231101.en"


def is_val_article(article_id: str, val_percent: float) -> bool:
    """Deterministic train/val split by article: a stable hash of the id, not the stream order."""
    return zlib.crc32(str(article_id).encode("utf-8")) % 10_000 < val_percent * 100


def check_val_percent(val_percent: float) -> None:
    """Both splits must get articles: 0 leaves validation empty, 100 training."""
    if not 0 < val_percent < 100:
        raise PicoError(f"--val-percent must be between 0 and 100 (exclusive), got {val_percent}")


def check_article(article: object, where: str) -> None:
    """An article needs a string or integer `id` and a string (or missing) `text`."""
    if not isinstance(article, Mapping):
        raise PicoError(f"--data-files: {where} holds a {type(article).__name__}, not an article object")
    if not isinstance(article.get("id"), (str, int)) or isinstance(article.get("id"), bool):
        raise PicoError(f"--data-files: {where} has an id of type {type(article.get('id')).__name__}; "
                        "Wikipedia's schema needs a string")
    if not isinstance(article.get("text"), (str, type(None))):
        raise PicoError(f"--data-files: {where} has a text of type {type(article['text']).__name__}; "
                        "Wikipedia's schema needs a string")


def check_parquet_schema(name: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(name)
    for column, ok in (("id", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
                        or pa.types.is_integer(t)),
                       ("text", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))):
        if column in schema.names and not ok(schema.field(column).type):
            raise PicoError(f"--data-files: {name} has a column {column!r} of type {schema.field(column).type}; "
                            "Wikipedia's schema needs a string")


def check_article_files(files: list[str]) -> None:
    """Refuse a damaged file of a local Wikipedia set before training starts (streaming would only
    reach it hundreds of steps in): parquet footers must read, JSON lines must parse."""
    import json

    for name in files:
        try:
            if name.endswith(".parquet"):
                check_parquet_schema(name)
            else:
                with open(name, encoding="utf-8") as f:
                    try:  # JSON lines, one article each ...
                        for number, line in enumerate(f, start=1):
                            if line.strip():
                                check_article(json.loads(line), f"{name} line {number}")
                    except ValueError:
                        if name.endswith(".jsonl"):
                            raise
                        f.seek(0)
                        doc = json.load(f)  # ... or one JSON document
                        for article in doc if isinstance(doc, list) else [doc]:
                            check_article(article, name)
        except PicoError:
            raise
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
    try:  # the hub client logs every retry of an unreachable host: the one-line error below says it
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError:
        pass
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
    except Exception as exc:  # network, missing config, schema, a full disk under the cache: one line for the user
        cause = os_cause(exc)
        why = f" ({cause.strerror} in {cause.filename or 'the datasets cache'})" if cause else ""
        raise PicoError(f"could not open dataset {data_files or name}: {str(exc).splitlines()[0][:200]}{why}"
                        ) from None
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
