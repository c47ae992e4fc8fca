"""`picogpt-bench CHECKPOINT`: torch (naive, KV cache) against ONNX Runtime (fp32, int8, int4), and
optionally llama.cpp (`--engines ...,llamacpp-q8_0`, bench/llamacpp.py).

Every engine runs in its own process, interleaved A B C ... A B C over the rounds; the table
quotes medians (and min-max) of the rounds, the speed-up over both torch baselines, total tokens/s
per batch size (`--batches 1,4,8,16`), and the roofline: achieved ms/token over the floor the
cache level the weights live in (or the int8/fp32 multiply rate) allows.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from picogpt.bench.llamacpp import ENGINES as LLAMACPP_ENGINES
from picogpt.bench.quality import quality
from picogpt.bench.results import envelope, load_results, write_result
from picogpt.bench.roofline import floor_ms, measure_machine
from picogpt.bench.system_info import busy_report, machine_report
from picogpt.errors import PicoError, cli_errors, path_type
from picogpt.paths import MARKDOWN_MARKER, check_output, write_atomic
from picogpt.system import check_threads
from picogpt.windows import check_overlap

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


def check_outputs(outputs, inputs) -> None:
    """Each report path: writable, not an input, not another report's path, not a file picogpt did not write."""
    outputs = [(path, flag) for path, flag in outputs if path is not None]
    for i, (path, flag) in enumerate(outputs):
        check_output(path, flag, inputs, [(f, p) for p, f in outputs[:i]])


def parse_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PicoError(f"{name} takes a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise PicoError(f"{name} is empty")
    return values


class LatencyByDefault(click.Group):
    """`picogpt-bench CHECKPOINT ...` stays the latency benchmark; `picogpt-bench quality ...` is the other one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["latency", *args]
        elif not args:
            args = ["latency"]
        return super().parse_args(ctx, args)


@click.group(cls=LatencyByDefault, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks: `latency` (the default: torch vs ONNX Runtime per token) and `quality` (val loss per CPU-minute)."""


@main.command("latency", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=path_type(), required=False)
@click.option("--onnx", "onnx_files", type=path_type(), multiple=True,
              help="Pre-exported .onnx files (repeatable); missing ORT variants are exported from CHECKPOINT.")
@click.option("--threads", "threads_text", default="1", show_default=True,
              help="Sweep, e.g. 1,2 (ORT engines use more than 1 only where it measures faster at load).")
@click.option("--engines", "engines_text", default=",".join(DEFAULT_ENGINES), show_default=True,
              help=f"Also: {', '.join(LLAMACPP_ENGINES)} (llama.cpp on a GGUF of CHECKPOINT; needs llama-cpp-python).")
@click.option("--batches", "batches_text", default="1", show_default=True,
              help="Streams decoded as one batch, e.g. 1,4,8,16: total tokens/s per batch size.")
@click.option("--cores", default="", help="Pin every engine to these CPUs (e.g. 0,1) to emulate a small machine.")
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--tokens", type=click.IntRange(min=10), default=1400, show_default=True,
              help="Generated per engine per round (>= 1,280 crosses 10 windows).")
@click.option("--naive-tokens", type=click.IntRange(min=3), default=30, show_default=True,
              help="torch-naive recomputes 1,280 characters per token: it is timed on fewer tokens.")
@click.option("--overlap", type=int, default=None,
              help="Characters each new window re-reads (default: each file's own; 0 = the plain protocol).")
@click.option("--quick", is_flag=True, help="< 60 s: 2 rounds, 300 tokens, 1 thread.")
@click.option("--json", "json_path", type=path_type(), default=None)
@click.option("--markdown", "md_path", type=path_type(), default=None)
@click.option("--plot", "plot_path", type=path_type(), default=None)
@cli_errors
def latency(checkpoint: Path | None, onnx_files: tuple[Path, ...], threads_text: str, engines_text: str,
            batches_text: str, cores: str, rounds: int, tokens: int, naive_tokens: int, overlap: int | None,
            quick: bool, json_path: Path | None, md_path: Path | None, plot_path: Path | None) -> None:
    """Measure generation latency of torch and ONNX Runtime engines on this machine."""
    from picogpt.bench.report import print_table, roofline_text, write_plot
    from picogpt.bench.results_page import latency_section, provenance

    check_outputs(((json_path, "--json"), (md_path, "--markdown"), (plot_path, "--plot")),
                  [("CHECKPOINT", checkpoint), *(("--onnx", f) for f in onnx_files)])
    threads = parse_list(threads_text, "--threads")
    for t in threads:
        check_threads(t)
    batches = parse_list(batches_text, "--batches")
    if min(batches) < 1:
        raise PicoError("--batches takes sizes >= 1")
    wanted = [e.strip() for e in engines_text.split(",") if e.strip()]
    unknown = [e for e in wanted if e not in (*DEFAULT_ENGINES, *LLAMACPP_ENGINES)]
    if unknown:
        raise PicoError(f"--engines: unknown {', '.join(unknown)} (known: "
                        f"{', '.join((*DEFAULT_ENGINES, *LLAMACPP_ENGINES))})")
    if cores:
        pinned = set(parse_list(cores, "--cores"))
        available = os.sched_getaffinity(0)
        if not pinned <= available:
            raise PicoError(f"--cores names CPUs that do not exist here: {sorted(pinned - available)} "
                            f"(available: {sorted(available)})")
    if checkpoint is None and not onnx_files:
        raise PicoError("give a CHECKPOINT, or --onnx files")
    for p in [checkpoint, *onnx_files]:
        if p is not None and not p.is_file():
            raise PicoError(f"file not found: {p}")
    for p in [checkpoint, *onnx_files] if overlap is not None else []:
        if p is not None:
            check_overlap(overlap, context_len_of(p))
    if quick:
        rounds, tokens, naive_tokens, threads = min(rounds, 2), 300, 5, threads[:1]
    if checkpoint is not None and not have_torch():
        click.echo("note: torch is not installed; torch engines skipped", err=True)
    info = machine_report()
    click.echo(info["text"])
    busy = busy_report()
    if busy:
        click.echo(f"warning: the machine is busy ({busy}); multi-thread figures are unreliable", err=True)
    work = Path(tempfile.mkdtemp(prefix="picogpt-bench-"))
    try:
        models, notes = all_models(checkpoint, list(onnx_files), wanted, work)
        for note in notes:
            click.echo(f"note: {note}", err=True)
        machine = measure_machine()
        click.echo(f"roofline probe (1 core): {roofline_text(machine)}")
        raw: dict[tuple[str, int, int], list[dict]] = {}
        for r in range(rounds):
            for t in threads:
                for b in batches:
                    for engine, path in models.items():
                        if b > 1 and engine in SINGLE_STREAM:
                            continue
                        n = naive_tokens if engine == "torch-naive" else tokens
                        raw.setdefault((engine, t, b), []).append(run_engine(engine, path, t, cores, n, b, overlap))
            click.echo(f"round {r + 1}/{rounds} done", err=True)
        rows = build_rows(raw, models, machine)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    for line in ratio_lines(rows):
        click.echo(line)
    result = envelope("latency", "picogpt-bench", rows, roofline=machine, busy=busy, notes=notes)
    write_result(json_path, result)
    if md_path:
        write_atomic(md_path, MARKDOWN_MARKER + "\n" + "\n".join(provenance(None, result)
                                                                + latency_section(None, result)) + "\n", "--markdown")
    if plot_path:
        write_plot(plot_path, rows)


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


PAGE_HEADING = b"# Measured results\n"  # what render_page writes first: a page it may replace


@main.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--results", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("docs/results"),
              show_default=True, help="The result files (*.json) the benchmarks wrote with --json.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/results.md"),
              show_default=True)
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=Path("README.md"),
              show_default=True, help="Its Results table (between the results markers) is rendered too.")
@click.option("--no-plots", is_flag=True, help="Leave the PNG plots beside the JSON as they are.")
@cli_errors
def report(folder: Path, out: Path, readme: Path, no_plots: bool) -> None:
    """Render docs/results.md (tables and plots) and the README's Results table from the stored JSON."""
    from picogpt.bench.results_page import render_page, render_readme_table, replace_readme_table, write_plots

    results = load_results(folder)
    check_output(out, "--out", [("--readme", readme)], ours=lambda p: p.read_bytes().startswith(PAGE_HEADING))
    text = readme.read_text() if readme.is_file() else None
    if text is None:
        raise PicoError(f"--readme: file not found: {readme}")
    write_atomic(out, render_page(results, os.path.relpath(folder, out.parent or Path("."))), "--out")
    write_atomic(readme, replace_readme_table(text, render_readme_table(results)), "--readme")
    plots = [] if no_plots else write_plots(results, folder)
    click.echo(f"wrote {out} and the Results table of {readme} from {len(results)} result file(s)"
               + (f"; plots: {', '.join(p.name for p in plots)}" if plots else ""))


main.add_command(quality)

if __name__ == "__main__":
    main()
