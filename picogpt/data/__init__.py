"""Training data: a local text file or tinyshakespeare (`text`), Wikipedia streamed (`wikipedia`), and the
memmaps of `picogpt-prepare` (`prepare`). Everything here is numpy; `picogpt.train` makes tensors.

A batch is `x, y` of shape [B, N] with y = x shifted by one character, N = windows * context_len.
`DataConfig` names the data of a run; it is stored in the checkpoint so eval and `--resume` read the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from picogpt.data.text import TokenData, load_token_data
from picogpt.data.wikipedia import WIKI_DEFAULT_CONFIG, WIKI_DEFAULT_NAME, WikipediaData
from picogpt.errors import PicoError
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> DataConfig | None:
        """The stored data settings (checkpoints before they were stored: only the dataset is known)."""
        if "data_config" in ckpt:
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in ckpt["data_config"].items() if k in known})
        dataset = ckpt.get("train_config", {}).get("dataset")
        return None if dataset is None else cls(dataset=dataset)


def open_data(dc: DataConfig, tokenizer: CharTokenizer, seq_len: int, seed: int, warn=print,
              shard: tuple[int, int] = (0, 1)) -> TokenData | WikipediaData:
    """The one place that turns the data flags into a batch source.

    `shard = (rank, world)`: under torchrun each rank trains on a disjoint part of the data.
    """
    if dc.dataset == "wikipedia":
        return WikipediaData(tokenizer, seq_len, seed, dc.wiki_name, dc.wiki_config, dc.files, dc.val_percent,
                             shard=shard)
    if dc.dataset == "text" and dc.path is None:
        raise PicoError("--dataset text needs --data PATH")
    data, unknown = load_token_data(dc.path, tokenizer, seq_len, dc.dataset)
    if unknown:
        warn(f"warning: {unknown:,} characters are not in the vocabulary and were mapped to <?>")
    data.shard(*shard)
    return data
