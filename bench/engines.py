"""One engine measured in its own process (torch and onnxruntime thread pools interfere in one).

`python -m picogpt.bench.engines --engine E --model PATH ...` prints one JSON line: import+load
time, prefill latency for a 128-character prompt, per-token decode latencies over a long
generation (crossing windows, sampling included; `--batch N` streams at once), peak RSS.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before any heavy import: "import + load" starts here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import string  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from picogpt.bench.llamacpp import ENGINES as LLAMACPP_ENGINES  # noqa: E402
from picogpt.generation import GenerationStats, generate_ids, prefill  # noqa: E402
from picogpt.sampling import Sampler, SamplingConfig  # noqa: E402
from picogpt.tokenizer import CharTokenizer  # noqa: E402
from picogpt.windows import STREAM_WINDOWS, resolve_overlap  # noqa: E402

ENGINES = ("torch-naive", "torch-kv", "ort-fp32", "ort-int8", "ort-int4", *LLAMACPP_ENGINES)
SAMPLING = SamplingConfig(temperature=0.8)


def prompt_ids(n: int, seed: int = 0) -> list[int]:
    """A deterministic pseudo-text prompt (lower-case letters and spaces) of n ids."""
    tok = CharTokenizer()
    rng = np.random.default_rng(seed)
    ids = rng.choice(tok.encode(string.ascii_lowercase), size=n)
    ids[rng.random(n) < 0.18] = tok.encode(" ")[0]
    return ids.tolist()


class NaiveTorchDecoder:
    """torch without a cache, as a user's first loop would run it: every token recomputes the last
    10 windows of text (the usable context). It implements the decoder interface of picogpt.generation."""

    def __init__(self, model, overlap: int) -> None:
        self.model, self.config, self.overlap = model, model.config, overlap
        self.crop = STREAM_WINDOWS * model.config.context_len

    def new_state(self, batch: int = 1) -> list[list[int]]:
        return [[] for _ in range(batch)]

    def feed(self, ids: np.ndarray, text: list[list[int]]) -> np.ndarray:
        import torch

        for row, new in zip(text, np.asarray(ids).tolist()):
            row.extend(new)
        with torch.inference_mode():
            logits, _ = self.model(torch.tensor([row[-self.crop :] for row in text]), overlap=self.overlap)
        return logits[:, -1].numpy()


def load_decoder(engine: str, path: str, threads: int, overlap: int | None = None):
    """The engine's decoder: torch (KV-cached or naive) over a checkpoint, llama.cpp over a GGUF, or
    onnxruntime over a file (at up to `threads` threads, as many as measure fastest: runtime/threads.py).
    `overlap`: what a new window re-reads (default: the file's; for a checkpoint, the exporter's default)."""
    if engine.startswith("llamacpp"):
        from picogpt.bench.llamacpp import LlamaCppDecoder

        return LlamaCppDecoder(path, threads, overlap=overlap)
    if engine.startswith("torch"):
        import torch

        from picogpt.checkpoint import read_checkpoint
        from picogpt.model import TorchDecoder

        torch.set_num_threads(threads)
        model = read_checkpoint(path).model
        k = resolve_overlap(overlap, model.config.context_len)
        return NaiveTorchDecoder(model, k) if engine == "torch-naive" else TorchDecoder(model, k)
    from picogpt.runtime.threads import fastest_decoder

    return fastest_decoder(path, threads, overlap)


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent
    across fork + exec, so a light engine launched by a heavy parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(engine: str, path: str, threads: int, tokens: int, batch: int = 1, overlap: int | None = None,
            prefill_reps: int = 5) -> dict:
    """Load, prefill 128 characters (median of `prefill_reps`), then decode `tokens` steps of `batch` streams
    with sampling: per-step latencies and total tokens/s (batch x steps / seconds)."""
    decoder = load_decoder(engine, path, threads, overlap)
    load_s = time.perf_counter() - _T0
    prompt = np.array([prompt_ids(128)], dtype=np.int64)
    times = []
    for _ in range(prefill_reps):
        t = time.perf_counter()
        prefill(decoder, prompt, decoder.new_state(1))
        times.append(time.perf_counter() - t)
    prefill_ms = float(np.median(times) * 1000)
    # naive: measured in steady state, with the cropped context already full
    start = np.array([prompt_ids(decoder.crop, seed=1)], dtype=np.int64) if engine == "torch-naive" else prompt
    start = np.concatenate([start] + [np.roll(start, 7 * b, axis=1) for b in range(1, batch)])  # distinct streams
    sampler = Sampler(SAMPLING, decoder.config.vocab_size, seed=0)
    per_token, last, stats = [], None, GenerationStats()
    t_all = time.perf_counter()
    for _ in generate_ids(decoder, start, tokens + 1, sampler, stats=stats):  # the time between two ids: feed + sample
        now = time.perf_counter()
        if last is None:
            t_all = now
        else:
            per_token.append(now - last)
        last = now
    total = time.perf_counter() - t_all
    ms = np.array(per_token) * 1000
    if hasattr(decoder, "close"):
        decoder.close()
    return {
        "engine": engine, "threads": threads, "threads_used": getattr(decoder, "threads_used", threads),
        "batch": batch, "load_s": load_s, "prefill_ms": prefill_ms,
        "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)), "tokens": tokens, "tokens_per_s": batch * tokens / total,
        "peak_rss_mb": peak_rss_mb(), "overlap": decoder.overlap, "overlap_share": stats.overlap_share,
        "size_mb": os.path.getsize(path) / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", required=True, help=f"{', '.join(ENGINES)}, or ort-<quantization> for any file")
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cores", default="")
    p.add_argument("--tokens", type=int, default=1400)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--overlap", type=int, default=None)
    a = p.parse_args()
    if a.engine not in ENGINES and not a.engine.startswith("ort-"):
        p.error(f"unknown engine {a.engine}")
    if a.cores:
        os.sched_setaffinity(0, {int(c) for c in a.cores.split(",")})
    if a.engine.startswith("llamacpp"):
        from picogpt.bench.llamacpp import available

        if available():
            print(available(), file=sys.stderr)
            sys.exit(2)
    print(json.dumps(measure(a.engine, a.model, a.threads, a.tokens, a.batch, a.overlap)))


if __name__ == "__main__":
    main()
