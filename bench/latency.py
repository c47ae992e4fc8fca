"""The latency benchmark's parts: which files each engine runs, one engine per process, the rows and the
comparisons printed under the table (`picogpt-bench latency`, bench/cli.py)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import click

from picogpt.bench.llamacpp import ENGINES as LLAMACPP_ENGINES
from picogpt.bench.roofline import floor_ms
from picogpt.errors import PicoError

ORT_ENGINES = {"ort-fp32": "none", "ort-int8": "int8", "ort-int4": "int4"}
DEFAULT_ENGINES = ("torch-naive", "torch-kv", *ORT_ENGINES)
SINGLE_STREAM = ("torch-naive", *LLAMACPP_ENGINES)  # timed at batch 1 only


def have_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def prepare_models(checkpoint: Path | None, onnx_files: list[Path], work: Path) -> dict[str, Path]:
    """engine -> file: the checkpoint for torch, exported/quantized files for ORT."""
    models: dict[str, Path] = {}
    if checkpoint is not None and have_torch():
        models["torch-naive"] = models["torch-kv"] = checkpoint
    for f in onnx_files:
        from picogpt.runtime.decoder import OnnxDecoder

        quant = OnnxDecoder(f).metadata.get("quantization", "none")
        name = next((e for e, q in ORT_ENGINES.items() if q == quant), f"ort-{quant}")
        models[name] = f
    missing = [e for e in ORT_ENGINES if e not in models]
    if missing and checkpoint is not None and have_torch():
        click.echo(f"exporting {', '.join(missing)} from {checkpoint} ...", err=True)
        from picogpt.checkpoint import read_checkpoint
        from picogpt.export.build import build_files

        methods = [ORT_ENGINES[e] for e in missing if ORT_ENGINES[e] != "none"]
        files = build_files(read_checkpoint(checkpoint), work, methods)
        models.update({engine: files[ORT_ENGINES[engine]] for engine in missing})
    return models


def context_len_of(path: Path) -> int:
    """The window length of a checkpoint or an exported file (what --overlap must stay under)."""
    if path.suffix == ".onnx":
        from picogpt.runtime.decoder import OnnxDecoder

        return OnnxDecoder(path).config.context_len
    from picogpt.checkpoint import read_checkpoint

    return read_checkpoint(path).model.config.context_len


def run_engine(engine: str, model: Path, threads: int, cores: str, tokens: int, batch: int = 1,
               overlap: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "picogpt.bench.engines", "--engine", engine, "--model", str(model),
           "--threads", str(threads), "--tokens", str(tokens), "--cores", cores, "--batch", str(batch),
           *(["--overlap", str(overlap)] if overlap is not None else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise PicoError(f"engine {engine} failed: {(out.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    keys = ["load_s", "prefill_ms", "p50_ms", "p90_ms", "p99_ms", "tokens_per_s", "peak_rss_mb"]
    s = {k: statistics.median(r[k] for r in runs) for k in keys}
    s["p50_min"] = min(r["p50_ms"] for r in runs)
    s["p50_max"] = max(r["p50_ms"] for r in runs)
    s["size_mb"] = runs[0]["size_mb"]
    s["overlap"] = runs[0].get("overlap", 0)
    s["overlap_share"] = statistics.median(r.get("overlap_share", 0.0) for r in runs)
    s["rounds"] = len(runs)
    used = sorted({r.get("threads_used", r["threads"]) for r in runs})
    s["threads_used"] = "/".join(map(str, used))  # ORT keeps 1 thread where more measure slower at load
    return s


def all_models(checkpoint: Path | None, onnx_files: list[Path], wanted: list[str], work: Path
               ) -> tuple[dict[str, Path], list[str]]:
    """engine -> file for the `wanted` engines that can run here, and notes on the ones that cannot."""
    models = {e: p for e, p in prepare_models(checkpoint, onnx_files, work).items()
              if e in wanted or e not in DEFAULT_ENGINES}
    llama = [e for e in wanted if e in LLAMACPP_ENGINES]
    notes: list[str] = []
    if llama and (checkpoint is None or not have_torch()):
        notes.append("llama.cpp engines need CHECKPOINT and torch (the GGUF is written from the checkpoint)")
    elif llama:
        from picogpt.bench.llamacpp import prepare

        paths, notes = prepare(checkpoint, llama, work, lambda m: click.echo(m, err=True))
        models.update(paths)
    return models, notes


def build_rows(raw: dict, models: dict[str, Path], machine: dict) -> list[dict]:
    """Medians per engine, thread count and batch, speed-ups and the roofline columns."""
    from picogpt.bench.report import INT8_ENGINES, model_costs

    rows = []
    for (engine, t, b), runs in raw.items():
        row = {"engine": engine, "threads": t, "batch": b, **summarize(runs)}
        weights, cache, flops = model_costs(engine, models[engine])
        mem, comp, level = floor_ms(weights + b * cache, b * flops, machine, engine in INT8_ENGINES)
        row["floor_ms"] = max(mem, comp)
        kind = "int8" if engine in INT8_ENGINES else "fp32"
        row["bound"] = f"memory ({level})" if mem >= comp else f"compute ({kind})"
        row["vs_floor"] = row["p50_ms"] / row["floor_ms"]
        rows.append(row)
    for row in rows:
        for base in ("torch-naive", "torch-kv"):
            ref = next((r for r in rows if r["engine"] == base and r["threads"] == row["threads"]
                        and r["batch"] == row["batch"]), None)
            row[f"x_{base}"] = ref["p50_ms"] / row["p50_ms"] if ref else None
    return rows


def ratio_lines(rows: list[dict]) -> list[str]:
    """The comparisons the bench exists for: int8 against llama.cpp, 2 threads against 1, batches against 1."""
    def get(engine: str, t: int = 1, b: int = 1) -> dict | None:
        return next((r for r in rows if r["engine"] == engine and r["threads"] == t and r["batch"] == b), None)

    out, ours = [], get("ort-int8")
    for peer in LLAMACPP_ENGINES:
        if ours and get(peer):
            p = get(peer)
            out.append(f"ort-int8 vs {peer} (1 thread): decode {ours['tokens_per_s'] / p['tokens_per_s']:.2f}x "
                       f"tokens/s, prefill {p['prefill_ms'] / ours['prefill_ms']:.2f}x")
    for r in rows:
        one = get(r["engine"], 1, r["batch"])
        if r["threads"] > 1 and one:
            out.append(f"{r['engine']} batch {r['batch']}: {r['threads']} threads {one['p50_ms'] / r['p50_ms']:.2f}x "
                       f"1 thread (medians; its slowest round vs 1 thread's fastest "
                       f"{one['p50_min'] / r['p50_max']:.2f}x; threads used {r['threads_used']})")
        base = get(r["engine"], r["threads"], 1)
        if r["batch"] > 1 and base:
            out.append(f"{r['engine']} {r['threads']} thr: batch {r['batch']} total tokens/s "
                       f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x batch 1")
    return out


def run_rounds(models: dict[str, Path], rounds: int, threads: list[int], batches: list[int], cores: str,
               tokens: tuple[int, int], overlap: int | None) -> dict[tuple[str, int, int], list[dict]]:
    """Every engine at every thread count and batch size, interleaved A B C ... A B C over the rounds;
    `tokens`: (per engine, for torch-naive)."""
    raw: dict[tuple[str, int, int], list[dict]] = {}
    for r in range(rounds):
        for t in threads:
            for b in batches:
                for engine, path in models.items():
                    if b > 1 and engine in SINGLE_STREAM:
                        continue
                    n = tokens[1] if engine == "torch-naive" else tokens[0]
                    raw.setdefault((engine, t, b), []).append(run_engine(engine, path, t, cores, n, b, overlap))
        click.echo(f"round {r + 1}/{rounds} done", err=True)
    return raw
