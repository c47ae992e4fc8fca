"""`picogpt-eval`: val loss per window index, with the carried context vector and with it zeroed.

This is the honest measure of what the context vector buys: if windows 2..10 are no better
with the carried vector than with zeros, the trick does nothing.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from torch.nn import functional as F

from picogpt.checkpoint import load_model
from picogpt.data import WIKI_DEFAULT_CONFIG, WIKI_DEFAULT_NAME, open_data
from picogpt.errors import cli_errors
from picogpt.model import GPT


@torch.inference_mode()
def window_losses(model: GPT, data, batch_size: int, batches: int, seed: int, carry: bool) -> np.ndarray:
    """Mean val cross-entropy per window index (0-based) over fixed batches."""
    rng = np.random.default_rng(seed)
    sums = None
    for _ in range(batches):
        x, y = data.batch("val", batch_size, rng)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        per_window = []
        for k, (logits, _) in enumerate(model.iter_windows(x, carry=carry)):
            n = model.config.context_len
            target = y[:, k * n : k * n + logits.size(1)]
            per_window.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1)).item())
        sums = np.array(per_window) if sums is None else sums + per_window
    return sums / batches


def report_from_checkpoint(
    ckpt_path: Path,
    data_path: str | None = None,
    data_files: str | None = None,
    wiki_name: str = WIKI_DEFAULT_NAME,
    wiki_config: str | None = WIKI_DEFAULT_CONFIG,
    val_percent: float = 1.0,
    batches: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Print (and return) the carried-vs-zeroed table for a checkpoint on its own val data."""
    model, tokenizer, ckpt = load_model(ckpt_path)
    tc = ckpt.get("train_config", {})
    windows = tc.get("seq_windows", 10)
    batch_size = tc.get("batch_size", 12)
    seed = tc.get("seed", 1337) + 7
    data = open_data(tc.get("dataset", "tinyshakespeare"), tokenizer, windows * model.config.context_len, seed,
                     data_path, data_files, wiki_name, wiki_config, val_percent, warn=lambda m: None)
    carried = window_losses(model, data, batch_size, batches, seed, carry=True)
    zeroed = window_losses(model, data, batch_size, batches, seed, carry=False)
    print(f"val loss per window ({batches} x {batch_size} sequences of {windows} windows):")
    print("window  carried  zeroed  gain")
    for k, (c, z) in enumerate(zip(carried, zeroed), start=1):
        print(f"{k:>6}  {c:7.4f}  {z:6.4f}  {z - c:+.4f}")
    print(f"  mean  {carried.mean():7.4f}  {zeroed.mean():6.4f}  {zeroed.mean() - carried.mean():+.4f}")
    return carried, zeroed


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "data_path", default=None,
              help="Text file the checkpoint was trained on (default: tinyshakespeare).")
@click.option("--data-files", default=None, help="Wikipedia-schema parquet/JSONL glob (for --dataset wikipedia runs).")
@click.option("--batches", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@cli_errors
def main(checkpoint: Path, data_path: str | None, data_files: str | None, batches: int, threads: int | None) -> None:
    """Report val loss per window index with the carried context vector and with it zeroed."""
    if threads:
        torch.set_num_threads(threads)
    report_from_checkpoint(checkpoint, data_path, data_files, batches=batches)


if __name__ == "__main__":
    main()
