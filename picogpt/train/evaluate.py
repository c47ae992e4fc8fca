"""`picogpt-eval`: val loss per window index, with the carried context vector and with it zeroed.

This is the honest measure of what the context vector buys: if windows 2..10 are no better
with the carried vector than with zeros, the trick does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import click
import numpy as np
import torch
from torch.nn import functional as F

from picogpt.checkpoint import read_checkpoint
from picogpt.data import DataConfig, open_data
from picogpt.errors import PicoError, cli_errors, one_line_usage
from picogpt.model import GPT
from picogpt.system import check_threads
from picogpt.windows import STREAM_WINDOWS, resolve_overlap, stream_batches, window_spans


@torch.inference_mode()
def window_losses(model: GPT, data, batch_size: int, batches: int, seed: int, carry: bool,
                  overlap: int = 0) -> np.ndarray:
    """Mean val cross-entropy per window index (0-based) over fixed batches; each window after the first
    re-reads `overlap` characters, as generation does."""
    rng = np.random.default_rng(seed)
    sums = None
    for _ in range(batches):
        x, y = data.batch("val", batch_size, rng)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        spans = window_spans(x.size(1), model.config.context_len, overlap)
        per_window = []
        for (start, _), (logits, _) in zip(spans, model.iter_windows(x, carry=carry, overlap=overlap)):
            target = y[:, start : start + logits.size(1)]
            per_window.append(F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1)).item())
        sums = np.array(per_window) if sums is None else sums + per_window
    return sums / batches


@dataclass
class StreamScore:
    """Cross-entropy sums of a streamed text by window index and position in the window. A target at position
    j was predicted from j characters of the window (a later window's first `overlap` rows are re-read
    characters, never scored), so the position is also how much context the target had."""

    sums: np.ndarray  # [windows, context_len]
    counts: np.ndarray  # [windows, context_len]
    by_sequence: np.ndarray  # [sequences, windows, 2]: each sequence's loss sum and target count per window

    @property
    def mean(self) -> float:
        return float(self.sums.sum() / self.counts.sum())

    def per_window(self) -> np.ndarray:
        return self.sums.sum(1) / np.maximum(1, self.counts.sum(1))

    def gain_se(self, carried: StreamScore) -> np.ndarray:
        """Standard error of each window's gain (self: zeroed, `carried`: carried, on the same text).

        The streamed sequences are the independent units: the gain is a ratio (loss difference over
        targets), and this is the usual ratio estimator's standard error over the sequences."""
        diff, n = self.by_sequence[..., 0] - carried.by_sequence[..., 0], self.by_sequence[..., 1]
        total, m = np.maximum(1, n.sum(0)), len(diff)
        gain = diff.sum(0) / total
        return np.sqrt(((diff - gain * n) ** 2).sum(0) * m / max(1, m - 1)) / total

    def per_position(self, edges: tuple[int, ...] = (1, 2, 5, 17, 65)) -> list[tuple[str, float, int]]:
        """(range, mean loss, targets) by characters of context in the window (1-based ranges): 1, 2-4, 5-16,
        17-64, 65-end. With an overlap, the short ranges only hold the text's first window."""
        bounds = [*edges, self.sums.shape[1] + 1]
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if lo >= bounds[-1]:
                break  # a window shorter than the last edge
            hi = min(hi, bounds[-1])
            s, c = self.sums[:, lo - 1 : hi - 1].sum(), self.counts[:, lo - 1 : hi - 1].sum()
            if c:
                out.append((f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}", float(s / c), int(c)))
        return out

    @property
    def early(self) -> int:
        """Targets with at most this many characters of context count as a window's early ones: 16 of 128."""
        return max(1, self.sums.shape[1] // 8)

    def early_excess(self) -> float | None:
        """The most, over windows 2+, that early targets (`early`) cost above their window's mean (None: no
        later window has such targets, as with an overlap of `early` or more)."""
        upto = self.early
        early = self.counts[1:, :upto].sum(1)
        if not early.any():
            return None
        excess = self.sums[1:, :upto].sum(1) / np.maximum(1, early) - self.per_window()[1:]
        return float(excess[early > 0].max())


@torch.inference_mode()
def stream_score(model: GPT, ids: np.ndarray, seq_chars: int = 1280, carry: bool = True,
                 batch_size: int = 16, overlap: int = 0) -> StreamScore:
    """Score every character of `ids` after the first, read as the runtime reads text.

    The text is cut into consecutive sequences of `seq_chars` targets; each starts with a zero
    context vector and carries it from window to window (or zeroes it, `carry=False`); each window
    after the first re-reads the `overlap` characters before its new ones, as generation does, and each
    sequence after the text's first reads the `overlap` characters before it first (unscored).
    """
    n = model.config.context_len
    windows = len(list(window_spans(overlap + seq_chars, n, overlap)))
    sums, counts = np.zeros((windows, n)), np.zeros((windows, n))
    by_sequence = []
    for xs, ys, lead in stream_batches(ids, seq_chars, batch_size, lead=overlap):
        x, y = torch.from_numpy(xs), torch.from_numpy(ys)
        rows = np.zeros((len(xs), windows, 2))
        spans = window_spans(x.size(1), n, overlap)
        for k, ((start, replay), (logits, _)) in enumerate(zip(spans, model.iter_windows(x, carry=carry,
                                                                                          overlap=overlap))):
            skip = max(0, lead - start)  # the lead's own characters are read, not scored
            logits, t, row = logits[:, skip:], logits.size(1) - skip, replay + skip
            if t <= 0:
                continue
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                 y[:, start + skip - lead : start - lead + skip + t].reshape(-1),
                                 reduction="none").view(-1, t)
            sums[k, row : row + t] += ce.sum(0).double().numpy()
            counts[k, row : row + t] += ce.size(0)
            rows[:, k] = np.stack([ce.sum(1).double().numpy(), np.full(len(xs), t)], axis=1)
        by_sequence.append(rows)
    return StreamScore(sums, counts, np.concatenate(by_sequence))


def report_from_checkpoint(ckpt_path: Path, path: str | None = None, files: str | None = None,
                          batches: int = 4, overlap: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Print (and return) the carried-vs-zeroed table for a checkpoint on its own val data.

    The data is the one stored in the checkpoint; `path` / `files` replace its --data / --data-files (a file
    moved since training). A text split is scored whole, streamed in sequences of 10 windows as generation
    reads text, each window after the first re-reading `overlap` characters (the plain protocol's score,
    without them, is shown beside); Wikipedia's held-out articles are sampled (`batches` batches of the
    training shape).
    """
    loaded = read_checkpoint(ckpt_path)
    model, tokenizer = loaded.model, loaded.tokenizer
    overlap = resolve_overlap(overlap, model.config.context_len)
    tc = loaded.state.get("train_config", {})
    data_config = DataConfig.from_checkpoint(loaded.state) or DataConfig()
    data_config = replace(data_config, path=path or data_config.path, files=files or data_config.files)
    windows = STREAM_WINDOWS if data_config.dataset != "wikipedia" else tc.get("seq_windows", STREAM_WINDOWS)
    seed = tc.get("seed", 1337) + 7
    if data_config.dataset == "text" and data_config.path is None:
        raise PicoError(f"{ckpt_path} was trained on a text file: pass that file with --data PATH")
    if data_config.path is not None and not Path(data_config.path).exists():
        raise PicoError(f"{ckpt_path} was trained on {data_config.path}, which is not there now: "
                        "pass its new place with --data PATH")
    data = open_data(data_config, tokenizer, windows * model.config.context_len, seed, warn=lambda m: None,
                     hint=f"{windows} windows of this model need more: pass a longer text with --data")
    if isinstance(getattr(data, "val", None), np.ndarray):
        return stream_report(model, data.val, windows * model.config.context_len, overlap)
    batch_size = tc.get("batch_size", 12)
    carried, zeroed = (window_losses(model, data, batch_size, batches, seed, c, overlap) for c in (True, False))
    reread = f"each window after the first re-reads {overlap} characters" if overlap else "no overlap"
    print(f"val loss per window ({batches} x {batch_size} sequences of {windows * model.config.context_len:,} "
          f"characters; {reread}):")
    print_windows(carried, zeroed, None)
    seq, n = windows * model.config.context_len, model.config.context_len

    def mean(losses: np.ndarray, k: int) -> float:  # per target: windows after a re-read score fewer targets
        return float(np.average(losses, weights=[min(n - r, seq - s) for s, r in window_spans(seq, n, k)]))

    print(f"  mean  {mean(carried, overlap):7.4f}  {mean(zeroed, overlap):6.4f}  "
          f"{mean(zeroed, overlap) - mean(carried, overlap):+.4f}")
    if overlap:
        plain = mean(window_losses(model, data, batch_size, batches, seed, True), 0)
        print(f"plain protocol (a new window re-reads nothing): {plain:.4f}; the overlap gains "
              f"{plain - mean(carried, overlap):+.4f}")
    return carried, zeroed


def print_windows(carried: np.ndarray, zeroed: np.ndarray, se: np.ndarray | None) -> None:
    print("window  carried  zeroed  gain" + ("  ± its standard error over the sequences" if se is not None else ""))
    for k, (c, z) in enumerate(zip(carried, zeroed), start=1):
        err = f"  ± {se[k - 1]:.4f}" if se is not None and k > 1 else ""
        print(f"{k:>6}  {c:7.4f}  {z:6.4f}  {z - c:+.4f}{err}")


def stream_report(model: GPT, val: np.ndarray, seq: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole val split streamed as generation reads it, carried and zeroed, and the plain protocol's score."""
    carried_s, zeroed_s = (stream_score(model, val, seq, carry=c, overlap=overlap) for c in (True, False))
    carried, zeroed = carried_s.per_window(), zeroed_s.per_window()
    reread = f"each window after the first re-reads {overlap} characters" if overlap else "no overlap"
    print(f"val loss per window (the whole val split, {int(carried_s.counts.sum()):,} characters, in sequences "
          f"of {seq:,}; {reread}):")
    print_windows(carried, zeroed, zeroed_s.gain_se(carried_s))
    print(f"  mean  {carried_s.mean:7.4f}  {zeroed_s.mean:6.4f}  {zeroed_s.mean - carried_s.mean:+.4f}")
    if overlap:
        plain = stream_score(model, val, seq, overlap=0)
        print(f"plain protocol (a new window re-reads nothing): {plain.mean:.4f}; the overlap gains "
              f"{plain.mean - carried_s.mean:+.4f}")
    print("by characters of context in the window (carried; targets): "
          + ", ".join(f"{name}: {loss:.3f} ({n:,})" for name, loss, n in carried_s.per_position()))
    excess = carried_s.early_excess()
    print(f"targets with 1-{carried_s.early} characters of context, windows 2+: " + (
        f"at most {excess:+.3f} above their window's mean" if excess is not None else "none"))
    return carried, zeroed


@click.command(cls=one_line_usage(click.Command), context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", "path", default=None,
              help="The text file the checkpoint was trained on, if it moved (default: the one it names).")
@click.option("--data-files", "files", default=None,
              help="The Wikipedia-schema parquet/JSONL glob, if it moved (default: the one it names).")
@click.option("--batches", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--overlap", type=int, default=None,
              help="Characters each new window re-reads, as generation does (default: a quarter of a window, "
                   "as picogpt-export writes; 0 = the plain protocol).")
@cli_errors
def main(checkpoint: Path, path: str | None, files: str | None, batches: int, threads: int | None,
         overlap: int | None) -> None:
    """Report val loss per window index with the carried context vector and with it zeroed."""
    check_threads(threads)
    if threads:
        torch.set_num_threads(threads)
    report_from_checkpoint(checkpoint, path, files, batches=batches, overlap=overlap)


if __name__ == "__main__":
    main()
