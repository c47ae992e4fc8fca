"""Top-1 agreement between two PicoGPT files on the val split, streamed as the runtime streams text.

    python -m picogpt.export.agreement A.onnx B.onnx [--data TEXT] [--streams 64] [--chars 1280]

Each stream is a slice of the val split fed one character at a time (windows rolling over as in a long
generation); at every position both files' argmax is compared. Torch-free: both sides are onnxruntime.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from picogpt.runtime.decoder import OnnxDecoder
from picogpt.windows import STREAM_WINDOWS


def val_ids(decoder: OnnxDecoder, data: str | None) -> np.ndarray:
    """The val split (the last 10% of the text, as picogpt-train splits it) in the file's own ids."""
    from picogpt.data.text import load_token_data

    tokens, _ = load_token_data(data, decoder.tokenizer, seq_len=1, name="--data")
    return np.asarray(tokens.val, dtype=np.int64)


def agreement(a: OnnxDecoder, b: OnnxDecoder, ids: np.ndarray, streams: int, chars: int) -> tuple[float, int]:
    """(fraction of positions where a's and b's argmax agree, positions) over `streams` consecutive slices."""
    streams = min(streams, len(ids) // chars)
    batch = ids[: streams * chars].reshape(streams, chars)
    sa, sb = a.new_state(streams), b.new_state(streams)
    same = 0
    for t in range(chars):
        step = batch[:, t : t + 1]
        same += int((a.feed(step, sa).argmax(-1) == b.feed(step, sb).argmax(-1)).sum())
    return same / (streams * chars), streams * chars


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m picogpt.export.agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--data", default=None, help="Text file (default: tinyshakespeare, PICOGPT_DATA or the cache).")
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--chars", type=int, default=None, help="Per stream (default: 10 windows).")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    a, b = OnnxDecoder(args.a, threads=args.threads), OnnxDecoder(args.b, threads=args.threads)
    chars = args.chars or STREAM_WINDOWS * a.config.context_len
    share, n = agreement(a, b, val_ids(a, args.data), args.streams, chars)
    print(f"top-1 agreement {a.metadata.get('quantization')} vs {b.metadata.get('quantization')}: {share:.2%} "
          f"of {n:,} val positions ({args.streams} streams of {chars} characters)")


if __name__ == "__main__":
    main()
