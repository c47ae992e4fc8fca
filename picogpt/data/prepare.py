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
from pathlib import Path
from typing import Any

import click
import numpy as np

from picogpt.data.text import encode_array
from picogpt.data.wikipedia import WIKI_DEFAULT_CONFIG, WIKI_DEFAULT_NAME, is_val_article, open_article_stream
from picogpt.errors import PicoError, cli_errors, make_output_dir
from picogpt.tokenizer import CharTokenizer

SEPARATOR = "\n\n"


def write_memmap(ds: Any, path: Path, shards: int) -> int:
    """Concatenate the `ids` column of `ds` into a uint8 file at `path` (atomically); returns its length."""
    from tqdm import tqdm

    total = int(np.sum(ds["len"], dtype=np.int64)) if len(ds) else 0
    tmp = path.with_name(path.name + ".tmp")
    try:
        arr = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(total, 1),))
        at = 0
        shards = max(1, min(shards, len(ds)))
        for i in tqdm(range(shards), desc=f"writing {path.name}", unit="shard"):
            part = ds.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
            if len(part):
                ids = np.concatenate(list(part["ids"])).astype(np.uint8)
                arr[at : at + len(ids)] = ids
                at += len(ids)
        arr.flush()
        del arr
        if total == 0:
            os.truncate(tmp, 0)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C, SIGTERM (see main), a full disk: no half-written memmap is left
        tmp.unlink(missing_ok=True)
        raise
    return total


def prepare_wikipedia(out: Path, data_files: str | None, name: str, config: str | None, val_percent: float,
                      num_proc: int, shards: int) -> dict[str, int]:
    """Tokenize Wikipedia (hub or local files of its schema) into OUT/train.bin and OUT/val.bin."""
    tokenizer = CharTokenizer()
    ds = open_article_stream(name, config, data_files, streaming=False, num_proc=num_proc)

    def tokenize(article: dict) -> dict:
        ids, _ = encode_array((article.get("text") or "") + SEPARATOR, tokenizer)
        return {"ids": ids, "len": len(ids), "val": is_val_article(article["id"], val_percent)}

    ds = ds.map(tokenize, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenizing")
    sizes = {}
    for split, is_val in (("train", False), ("val", True)):
        part = ds.filter(lambda v, want=is_val: v == want, input_columns="val", num_proc=num_proc,
                         desc=f"selecting {split}")
        sizes[split] = write_memmap(part, out / f"{split}.bin", shards)
    return sizes


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tokenize a corpus once into memory-mapped train.bin / val.bin files."""


@main.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for train.bin and val.bin.")
@click.option("--data-files", type=str, default=None,
              help="Glob of local parquet/JSONL files with Wikipedia's schema (default: the hub dataset).")
@click.option("--wiki-name", default=WIKI_DEFAULT_NAME, show_default=True)
@click.option("--wiki-config", default=WIKI_DEFAULT_CONFIG, show_default=True)
@click.option("--val-percent", type=click.FloatRange(0, 100, min_open=True), default=1.0, show_default=True)
@click.option("--num-proc", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Tokenizing processes.")
@click.option("--shards", type=click.IntRange(min=1), default=64, show_default=True,
              help="Slices the memmap is written in (bounds the memory of each write).")
@cli_errors
def wikipedia(out: Path, data_files: str | None, wiki_name: str, wiki_config: str, val_percent: float,
              num_proc: int, shards: int) -> None:
    """Wikipedia -> OUT/train.bin, OUT/val.bin (uint8 ids; articles split by a hash of their id)."""
    make_output_dir(out)
    for stale in (out / "train.bin.tmp", out / "val.bin.tmp"):  # left by a kill -9
        stale.unlink(missing_ok=True)
    # SIGTERM unwinds like Ctrl-C, so the memmap being written is removed (exit 143)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sizes = prepare_wikipedia(out, data_files, wiki_name, wiki_config, val_percent, num_proc, shards)
    if sizes["train"] == 0 or sizes["val"] == 0:
        raise PicoError(f"{sizes['train']:,} train / {sizes['val']:,} val characters: raise --val-percent or "
                        "add articles")
    click.echo(f"wrote {out / 'train.bin'} ({sizes['train']:,} characters) and {out / 'val.bin'} "
               f"({sizes['val']:,}); train with: picogpt-train --dataset text --data {out / 'train.bin'}")


if __name__ == "__main__":
    main()
