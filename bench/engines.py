"""One engine measured in its own process (torch and onnxruntime thread pools interfere in one).

`python -m picogpt.bench.engines --engine E --model PATH ...` prints one JSON line: import+load
time, prefill latency for a 128-character prompt, per-token decode latencies over a long
generation (crossing windows, sampling included), peak RSS.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before any heavy import: "import + load" starts here

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402

import numpy as np  # noqa: E402

from picogpt.sampling import Sampler, SamplingConfig  # noqa: E402

ENGINES = ("torch-naive", "torch-kv", "ort-fp32", "ort-int8", "ort-int4")
SAMPLING = SamplingConfig(temperature=0.8)


def prompt_ids(n: int, vocab_letters: int = 26, seed: int = 0) -> list[int]:
    """A deterministic pseudo-text prompt (letters and spaces) of n ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(11, 11 + vocab_letters, size=n)
    ids[rng.random(n) < 0.18] = 69  # spaces
    return ids.tolist()


def torch_engine(path: str, threads: int, naive: bool):
    """(prefill(ids) -> logits, step(id) -> logits, reset()) for the torch model, KV-cached or naive."""
    import torch

    from picogpt.export.loading import load_any_checkpoint

    torch.set_num_threads(threads)
    model = load_any_checkpoint(path).model
    crop = 10 * model.config.context_len  # naive: the usable context, recomputed every token
    state: dict = {}

    @torch.inference_mode()
    def prefill(ids: list[int]) -> np.ndarray:
        state["text"] = list(ids)
        if naive:
            logits, _ = model(torch.tensor([state["text"][-crop:]]))
            return logits[:, -1].numpy()
        logits, state["kv"] = model.decode(torch.tensor([ids]), model.new_state(1))
        return logits.numpy()

    @torch.inference_mode()
    def step(t: int) -> np.ndarray:
        if naive:
            state["text"].append(t)
            logits, _ = model(torch.tensor([state["text"][-crop:]]))
            return logits[:, -1].numpy()
        logits, state["kv"] = model.decode(torch.tensor([[t]]), state["kv"])
        return logits.numpy()

    return prefill, step


def ort_engine(path: str, threads: int):
    from picogpt.onnx_io import OnnxDecoder

    decoder = OnnxDecoder(path, threads=threads)
    state: dict = {}

    def prefill(ids: list[int]) -> np.ndarray:
        state["s"] = decoder.new_state(1)
        return decoder.feed(np.array([ids], dtype=np.int64), state["s"])

    def step(t: int) -> np.ndarray:
        return decoder.feed(np.array([[t]], dtype=np.int64), state["s"])

    return prefill, step


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


def measure(engine: str, path: str, threads: int, tokens: int, prefill_reps: int = 5) -> dict:
    if engine.startswith("torch"):
        prefill, step = torch_engine(path, threads, naive=engine == "torch-naive")
    else:
        prefill, step = ort_engine(path, threads)
    load_s = time.perf_counter() - _T0
    prompt = prompt_ids(128)
    times = []
    for _ in range(prefill_reps):
        t = time.perf_counter()
        prefill(prompt)
        times.append(time.perf_counter() - t)
    prefill_ms = float(np.median(times) * 1000)
    if engine == "torch-naive":  # steady state: the cropped context is already full
        prefill(prompt_ids(1280, seed=1))
    else:
        prefill(prompt)
    sampler = Sampler(SAMPLING, 88, seed=0)
    logits = step(int(prompt[-1]))
    per_token = []
    t_all = time.perf_counter()
    for _ in range(tokens):
        t = time.perf_counter()
        nxt = int(sampler.sample(logits)[0])
        logits = step(nxt)
        per_token.append(time.perf_counter() - t)
    total = time.perf_counter() - t_all
    ms = np.array(per_token) * 1000
    return {
        "engine": engine, "threads": threads, "load_s": load_s, "prefill_ms": prefill_ms,
        "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)), "tokens": tokens, "tokens_per_s": tokens / total,
        "peak_rss_mb": peak_rss_mb(),
        "size_mb": os.path.getsize(path) / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--engine", choices=ENGINES, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cores", default="")
    p.add_argument("--tokens", type=int, default=1400)
    a = p.parse_args()
    if a.cores:
        os.sched_setaffinity(0, {int(c) for c in a.cores.split(",")})
    print(json.dumps(measure(a.engine, a.model, a.threads, a.tokens)))


if __name__ == "__main__":
    main()
