"""`picogpt-prepare`: tokenize a corpus once into uint8 memmaps (`train.bin`, `val.bin`).

nanoGPT's openwebtext recipe: `datasets.map` tokenizes with `num_proc` workers, then the
memmap is written shard by shard (contiguous slices of the dataset) under a progress bar, so
memory stays bounded whatever the corpus size. Training then reads the files with
`--dataset text --data OUT/train.bin` (memory-mapped; under torchrun each rank reads only its
own slice). Articles are split into train/val by the same stable hash of their id as the
streaming path, and separated by a blank line.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np

from picogpt.data.text import encode_array
from picogpt.data.wikipedia import (
    WIKI_DEFAULT_CONFIG,
    WIKI_DEFAULT_NAME,
    check_article,
    check_val_percent,
    is_val_article,
    open_article_stream,
)
from picogpt.errors import PicoError, cli_errors, make_output_dir, one_line_usage, path_type
from picogpt.paths import RunLock
from picogpt.tokenizer import CharTokenizer

SEPARATOR = "\n\n"


def write_memmap(ds: Any, path: Path, shards: int, replace: bool = True) -> int:
    """Concatenate the `ids` column of `ds` into a uint8 file at `path` (atomically; with `replace` False it is
    left at `path`.tmp for the caller to rename); returns its length."""
    from tqdm import tqdm

    total = int(np.sum(ds["len"], dtype=np.int64)) if len(ds) else 0
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # the space first: a full disk is an error here, not a SIGBUS in the memmap
            if total:
                os.posix_fallocate(f.fileno(), 0, total)
        arr = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(max(total, 1),)) if total else None
        at = 0
        shards = max(1, min(shards, len(ds)))
        for i in tqdm(range(shards), desc=f"writing {path.name}", unit="shard"):
            part = ds.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
            if len(part) and arr is not None:
                ids = np.concatenate(list(part["ids"])).astype(np.uint8)
                arr[at : at + len(ids)] = ids
                at += len(ids)
        if arr is not None:
            arr.flush()
            del arr
        if replace:
            os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C, SIGTERM (see main), a full disk: no half-written memmap is left
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise PicoError(f"--out: writing {path} failed ({exc.strerror or exc}); an earlier file there is "
                            "kept") from None
        raise
    return total


@contextmanager
def sigterm_unwinds():
    """SIGTERM unwinds like Ctrl-C while the memmaps are written, so no half-written one is left (exit 143).

    Only here: `datasets` forks its workers elsewhere, and `Pool.terminate` stops them with SIGTERM, which
    a Python handler can lose in a child that is still being forked; that worker then waits forever."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def prepare_wikipedia(out: Path, data_files: str | None, name: str, config: str | None, val_percent: float,
                      num_proc: int, shards: int) -> dict[str, int]:
    """Tokenize Wikipedia (hub or local files of its schema) into OUT/train.bin and OUT/val.bin."""
    tokenizer = CharTokenizer()
    ds = open_article_stream(name, config, data_files, streaming=False, num_proc=num_proc)

    def tokenize(article: dict) -> dict:
        check_article(article, f"article {article.get('id')!r}")
        ids, _ = encode_array((article.get("text") or "") + SEPARATOR, tokenizer)
        return {"ids": ids, "len": len(ids), "val": is_val_article(article["id"], val_percent)}

    ds = ds.map(tokenize, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenizing")
    parts = {split: ds.filter(lambda v, want=is_val: v == want, input_columns="val", num_proc=num_proc,
                              desc=f"selecting {split}") for split, is_val in (("train", False), ("val", True))}
    sizes = {}
    with sigterm_unwinds():
        try:
            for split, part in parts.items():
                sizes[split] = write_memmap(part, out / f"{split}.bin", shards, replace=False)
            if sizes["train"] == 0 or sizes["val"] == 0:  # checked before anything earlier is replaced
                raise PicoError(f"{sizes['train']:,} train / {sizes['val']:,} val characters: change --val-percent "
                                "or add articles")
            for split in ("train", "val"):
                os.replace(out / f"{split}.bin.tmp", out / f"{split}.bin")
        finally:
            for split in ("train", "val"):
                (out / f"{split}.bin.tmp").unlink(missing_ok=True)
    return sizes


@click.group(cls=one_line_usage(click.Group), context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tokenize a corpus once into memory-mapped train.bin / val.bin files."""


@main.command()
@click.option("--out", type=path_type(), required=True, help="Folder for train.bin and val.bin.")
@click.option("--data-files", type=str, default=None,
              help="Glob of local parquet/JSONL files with Wikipedia's schema (default: the hub dataset).")
@click.option("--wiki-name", default=WIKI_DEFAULT_NAME, show_default=True)
@click.option("--wiki-config", default=WIKI_DEFAULT_CONFIG, show_default=True)
@click.option("--val-percent", type=float, default=1.0, show_default=True,
              help="Percent of articles held out for validation (by a hash of the id).")
@click.option("--num-proc", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Tokenizing processes.")
@click.option("--shards", type=click.IntRange(min=1), default=64, show_default=True,
              help="Slices the memmap is written in (bounds the memory of each write).")
@click.option("--overwrite", is_flag=True, help="Replace the train.bin / val.bin an earlier run wrote in OUT.")
@cli_errors
def wikipedia(out: Path, data_files: str | None, wiki_name: str, wiki_config: str, val_percent: float,
              num_proc: int, shards: int, overwrite: bool) -> None:
    """Wikipedia -> OUT/train.bin, OUT/val.bin (uint8 ids; articles split by a hash of their id)."""
    check_val_percent(val_percent)
    import glob

    if data_files and not glob.glob(data_files):  # the input first: a wrong glob is the mistake to name
        raise PicoError(f"--data-files matched no files: {data_files}")
    make_output_dir(out)
    existing = [out / name for name in ("train.bin", "val.bin") if (out / name).exists()]
    for path in existing:
        if not path.is_file():
            raise PicoError(f"--out: {path} is a folder, where the prepared {path.name} goes")
    if existing and not overwrite:
        raise PicoError(f"--out {out} already holds {' and '.join(p.name for p in existing)}: replace them with "
                        "--overwrite, or choose another --out")
    lock = RunLock(out, "--out")  # only this process writes OUT: any temp file is a kill -9's leftover
    for stale in (out / "train.bin.tmp", out / "val.bin.tmp"):
        stale.unlink(missing_ok=True)
    sizes = prepare_wikipedia(out, data_files, wiki_name, wiki_config, val_percent, num_proc, shards)
    lock.release()
    click.echo(f"wrote {out / 'train.bin'} ({sizes['train']:,} characters) and {out / 'val.bin'} "
               f"({sizes['val']:,}); train with: picogpt-train --dataset text --data {out / 'train.bin'}")


if __name__ == "__main__":
    main()
