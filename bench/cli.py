"""`picogpt-bench CHECKPOINT`: torch (naive, KV cache) against ONNX Runtime (fp32, int8, int4), and
optionally llama.cpp (`--engines ...,llamacpp-q8_0`, bench/llamacpp.py).

Every engine runs in its own process, interleaved A B C ... A B C over the rounds; the table
quotes medians (and min-max) of the rounds, the speed-up over both torch baselines, total tokens/s
per batch size (`--batches 1,4,8,16`), and the roofline: achieved ms/token over the floor the
cache level the weights live in (or the int8/fp32 multiply rate) allows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import click

from picogpt.bench.latency import (
    DEFAULT_ENGINES,
    all_models,
    build_rows,
    context_len_of,
    have_torch,
    ratio_lines,
    run_rounds,
)
from picogpt.bench.llamacpp import ENGINES as LLAMACPP_ENGINES
from picogpt.bench.quality import quality
from picogpt.bench.results import envelope, load_results, write_result
from picogpt.bench.roofline import measure_machine
from picogpt.bench.system_info import busy_report, machine_report
from picogpt.errors import PicoError, cli_errors, one_line_usage, path_type
from picogpt.paths import MARKDOWN_MARKER, check_output, write_atomic
from picogpt.system import check_threads
from picogpt.windows import check_overlap


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


class LatencyByDefault(one_line_usage(click.Group)):
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


def check_inputs(cores: str, checkpoint: Path | None, onnx_files: tuple[Path, ...], overlap: int | None) -> None:
    """--cores, the model files and --overlap, refused in one line before any work."""
    if cores:
        pinned = set(parse_list(cores, "--cores"))
        available = os.sched_getaffinity(0)
        if not pinned <= available:
            raise PicoError(f"--cores names CPUs that do not exist here: {sorted(pinned - available)} "
                            f"(available: {sorted(available)})")
    if checkpoint is None and not onnx_files:
        raise PicoError("give a CHECKPOINT, or --onnx files")
    files = [p for p in (checkpoint, *onnx_files) if p is not None]
    for p in files:
        if not p.is_file():
            raise PicoError(f"file not found: {p}")
    for p in files if overlap is not None else []:
        check_overlap(overlap, context_len_of(p))


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
    check_inputs(cores, checkpoint, onnx_files, overlap)
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
        raw = run_rounds(models, rounds, threads, batches, cores, (tokens, naive_tokens), overlap)
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
