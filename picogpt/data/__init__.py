"""Training data: a local text file or tinyshakespeare (`text`), Wikipedia streamed (`wikipedia`), and the
memmaps of `picogpt-prepare` (`prepare`). Everything here is numpy; `picogpt.train` makes tensors.

A batch is `x, y` of shape [B, N] with y = x shifted by one character, N = windows * context_len.
`DataConfig` names the data of a run; it is stored in the checkpoint so eval and `--resume` read the same.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from picogpt.data.text import TokenData, load_token_data
from picogpt.data.wikipedia import WIKI_DEFAULT_CONFIG, WIKI_DEFAULT_NAME, WikipediaData
from picogpt.errors import PicoError, check_type
from picogpt.tokenizer import CharTokenizer

DATASETS = ("tinyshakespeare", "wikipedia", "text")


@dataclass(frozen=True)
class DataConfig:
    """The data flags of `picogpt-train` (`path`: --data, `files`: --data-files)."""

    dataset: str = "tinyshakespeare"
    path: str | None = None
    files: str | None = None
    wiki_name: str = WIKI_DEFAULT_NAME
    wiki_config: str | None = WIKI_DEFAULT_CONFIG
    val_percent: float = 1.0

    FLAGS: ClassVar[dict[str, str]] = {
        "dataset": "--dataset", "path": "--data", "files": "--data-files", "wiki_name": "--wiki-name",
        "wiki_config": "--wiki-config", "val_percent": "--val-percent"}

    def __post_init__(self) -> None:
        """Settings read back from a checkpoint are checked as the flags are: a dataset this picogpt does not know
        is refused, not read as tinyshakespeare."""
        if self.dataset not in DATASETS:
            raise PicoError(f"--dataset {self.dataset!r} is not one of: {', '.join(DATASETS)}")
        for key in ("path", "files", "wiki_name", "wiki_config"):
            check_type(getattr(self, key), f"data_config {key}", "str", allow_none=key != "wiki_name")
        check_type(self.val_percent, "data_config val_percent", "number")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> DataConfig | None:
        """The stored data settings (checkpoints before they were stored: only the dataset is known)."""
        if "data_config" in ckpt:
            if not isinstance(ckpt["data_config"], dict):
                raise PicoError("the checkpoint's data_config is not a dict: the file is damaged")
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in ckpt["data_config"].items() if k in known})
        tc = ckpt.get("train_config", {})
        dataset = tc.get("dataset") if isinstance(tc, dict) else None
        return None if dataset is None else cls(dataset=dataset)


def file_digest(path: str) -> dict[str, Any]:
    """Size and sha256 of a data file: stored with a run, so --resume can say when the file changed."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return {"path": path, "size": os.path.getsize(path), "sha256": h.hexdigest()}


def data_file_record(dc: DataConfig, state: dict[str, Any] | None, warn=print) -> dict[str, Any] | None:
    """The --data file's digest (None without one); on --resume, warn when it differs from the stored one."""
    if dc.path is None or not os.path.isfile(dc.path):
        return None
    now = file_digest(dc.path)
    before = (state or {}).get("data_file")
    if isinstance(before, dict) and before.get("path") == dc.path and before != now:
        what = (f"its size changed from {before.get('size')} to {now['size']} bytes"
                if before.get("size") != now["size"] else "its content changed (another sha256)")
        warn(f"warning: --data {dc.path} is not the file this run started on: {what}; the resumed run trains "
             "on it as it is now")
    return now


TRAIN_HINT = "lower --seq-windows or use more text"


def open_data(dc: DataConfig, tokenizer: CharTokenizer, seq_len: int, seed: int, warn=print,
              shard: tuple[int, int] = (0, 1), hint: str = TRAIN_HINT) -> TokenData | WikipediaData:
    """The one place that turns the data flags into a batch source.

    `shard = (rank, world)`: under torchrun each rank trains on a disjoint part of the data; `hint` is what a
    too-short text tells the user to do (train and eval have different flags).
    """
    if dc.dataset == "wikipedia":
        return WikipediaData(tokenizer, seq_len, seed, dc.wiki_name, dc.wiki_config, dc.files, dc.val_percent,
                             shard=shard)
    if dc.dataset == "text" and dc.path is None:
        raise PicoError("--dataset text needs --data PATH")
    data, unknown = load_token_data(dc.path, tokenizer, seq_len, dc.dataset, hint)
    if unknown:
        warn(f"warning: {unknown:,} characters are not in the vocabulary and were mapped to <?>")
    data.shard(*shard)
    return data
