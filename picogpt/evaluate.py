"""`picogpt-eval`: val loss per window index, with the carried context vector and with it zeroed.

This is the honest measure of what the context vector buys: if windows 2..10 are no better
with the carried vector than with zeros, the trick does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from torch.nn import functional as F

from picogpt.checkpoint import load_model
from picogpt.data import WIKI_DEFAULT_CONFIG, WIKI_DEFAULT_NAME, open_data
from picogpt.errors import PicoError, cli_errors
from picogpt.model import GPT
from picogpt.system import check_threads
from picogpt.windows import stream_batches


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


@dataclass
class StreamScore:
    """Cross-entropy sums of a streamed text by window index and position in the window."""

    sums: np.ndarray  # [windows, context_len]
    counts: np.ndarray  # [windows, context_len]

    @property
    def mean(self) -> float:
        return float(self.sums.sum() / self.counts.sum())

    def per_window(self) -> np.ndarray:
        return self.sums.sum(1) / np.maximum(1, self.counts.sum(1))

    def per_position(self, edges: tuple[int, ...] = (1, 2, 5, 17)) -> list[tuple[str, float]]:
        """Mean loss over position ranges of the window (1-based): 1, 2-4, 5-16, 17-end by default."""
        bounds = [*edges, self.sums.shape[1] + 1]
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            s, c = self.sums[:, lo - 1 : hi - 1].sum(), self.counts[:, lo - 1 : hi - 1].sum()
            out.append((f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}", float(s / max(1, c))))
        return out


@torch.inference_mode()
def stream_score(model: GPT, ids: np.ndarray, seq_chars: int = 1280, carry: bool = True,
                 batch_size: int = 16) -> StreamScore:
    """Score every character of `ids` after the first, read as the runtime reads text.

    The text is cut into consecutive sequences of `seq_chars` targets; each starts with a zero
    context vector and carries it from window to window (or zeroes it, `carry=False`).
    """
    n = model.config.context_len
    windows = -(-seq_chars // n)
    sums, counts = np.zeros((windows, n)), np.zeros((windows, n))
    for xs, ys in stream_batches(ids, seq_chars, batch_size):
        x, y = torch.from_numpy(xs), torch.from_numpy(ys)
        for k, (logits, _) in enumerate(model.iter_windows(x, carry=carry)):
            t = logits.size(1)
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[:, k * n : k * n + t].reshape(-1),
                                 reduction="none").view(-1, t)
            sums[k, :t] += ce.sum(0).double().numpy()
            counts[k, :t] += ce.size(0)
    return StreamScore(sums, counts)


STREAM_WINDOWS = 10  # the runtime's protocol is scored in sequences of 10 windows (1,280 characters by default)


def report_from_checkpoint(
    ckpt_path: Path,
    data_path: str | None = None,
    data_files: str | None = None,
    wiki_name: str = WIKI_DEFAULT_NAME,
    wiki_config: str | None = WIKI_DEFAULT_CONFIG,
    val_percent: float = 1.0,
    batches: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Print (and return) the carried-vs-zeroed table for a checkpoint on its own val data.

    A text split is scored whole, streamed in sequences of 10 windows as the runtime reads text;
    Wikipedia's held-out articles are sampled (`batches` batches of the training shape).
    """
    model, tokenizer, ckpt = load_model(ckpt_path)
    tc = ckpt.get("train_config", {})
    windows = STREAM_WINDOWS if tc.get("dataset") != "wikipedia" else tc.get("seq_windows", 10)
    seed = tc.get("seed", 1337) + 7
    if tc.get("dataset") == "text" and data_path is None:
        raise PicoError(f"{ckpt_path} was trained on a text file: pass that file with --data PATH")
    data = open_data(tc.get("dataset", "tinyshakespeare"), tokenizer, windows * model.config.context_len, seed,
                     data_path, data_files, wiki_name, wiki_config, val_percent, warn=lambda m: None)
    streamed = isinstance(getattr(data, "val", None), np.ndarray)
    if streamed:
        seq = windows * model.config.context_len
        carried_s, zeroed_s = (stream_score(model, data.val, seq, carry=c) for c in (True, False))
        carried, zeroed = carried_s.per_window(), zeroed_s.per_window()
        means = carried_s.mean, zeroed_s.mean
        print(f"val loss per window (the whole val split, {int(carried_s.counts.sum()):,} characters, "
              f"in sequences of {windows} windows):")
    else:
        batch_size = tc.get("batch_size", 12)
        carried = window_losses(model, data, batch_size, batches, seed, carry=True)
        zeroed = window_losses(model, data, batch_size, batches, seed, carry=False)
        means = float(carried.mean()), float(zeroed.mean())
        print(f"val loss per window ({batches} x {batch_size} sequences of {windows} windows):")
    print("window  carried  zeroed  gain")
    for k, (c, z) in enumerate(zip(carried, zeroed), start=1):
        print(f"{k:>6}  {c:7.4f}  {z:6.4f}  {z - c:+.4f}")
    print(f"  mean  {means[0]:7.4f}  {means[1]:6.4f}  {means[1] - means[0]:+.4f}")
    if streamed:
        print("by position in the window (carried): "
              + ", ".join(f"{name}: {loss:.3f}" for name, loss in carried_s.per_position()))
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
    check_threads(threads)
    if threads:
        torch.set_num_threads(threads)
    report_from_checkpoint(checkpoint, data_path, data_files, batches=batches)


if __name__ == "__main__":
    main()
