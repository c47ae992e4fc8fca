"""`picogpt-bench quality`: which recipe and preset reach the lowest val loss in M minutes of CPU.

Each (recipe, preset) trains for the same wall time with `picogpt-train --max-minutes M`, in its
own process, one after another (never side by side: two runs would share the cores). Each
checkpoint is then scored the same way, in its own process: mean cross-entropy of every
character of the full validation split, streamed in 1,280-character sequences with the context
vector carried from window to window (the runtime's protocol), and again with it zeroed.
The reference row is nanoGPT's README CPU recipe, reproduced with this project's model code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click

from picogpt.bench.results import envelope, write_result
from picogpt.config import GPTConfig
from picogpt.errors import PicoError, cli_errors, make_output_dir
from picogpt.paths import MARKDOWN_MARKER, save_figure, write_atomic
from picogpt.system import check_threads
from picogpt.windows import STREAM_WINDOWS, check_overlap, resolve_overlap

# name -> (picogpt-train arguments, presets it runs with; None = the arguments fix the shape)
RECIPES: dict[str, tuple[list[str], list[str] | None]] = {
    # This project's default: Muon + AdamW, warmup-stable-cooldown fitted to the minutes, batch x 2 windows.
    "picogpt": ([], ["pico", "small", "base"]),
    # The same with AdamW for every parameter: what Muon's extra work per step buys (not run by default).
    "picogpt-adamw": (["--optimizer", "adamw"], ["pico", "small", "base"]),
    # The recipe before this benchmark: AdamW, cosine, 4 sequences of 10 windows, lr 3e-3.
    "seed": (["--optimizer", "adamw", "--schedule", "cosine", "--batch-size", "4", "--seq-windows", "10", "--lr",
              "3e-3"], ["base"]),
    # nanoGPT's README CPU recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12, AdamW 1e-3, no dropout.
    "nanogpt": (["--context-len", "64", "--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--seq-windows", "1",
                 "--batch-size", "12", "--optimizer", "adamw", "--schedule", "cosine", "--lr", "1e-3",
                 "--warmup-iters", "100", "--eval-interval", "250", "--eval-iters", "20"], None),
}
SEQ_CHARS = STREAM_WINDOWS * GPTConfig.context_len  # the streaming protocol's sequence: 1,280 characters


def score_checkpoint(ckpt: Path, data: str | None, threads: int, overlap: int | None = None) -> dict:
    """Full-val cross-entropy, carried and zeroed, per window and by characters of context, each window after
    the first re-reading `overlap` characters as generation does; `plain`: the score without them (run in a
    child)."""
    import torch

    from picogpt.checkpoint import read_checkpoint
    from picogpt.data import DataConfig
    from picogpt.data.text import load_token_data
    from picogpt.train.evaluate import stream_score

    torch.set_num_threads(threads)
    loaded = read_checkpoint(ckpt)
    model, tokenizer = loaded.model, loaded.tokenizer
    if (DataConfig.from_checkpoint(loaded.state) or DataConfig()).dataset == "wikipedia":
        raise PicoError("the quality benchmark scores a text split; this checkpoint was trained on Wikipedia")
    val = load_token_data(data, tokenizer, SEQ_CHARS, "data")[0].val
    overlap = resolve_overlap(overlap, model.config.context_len)
    carried, zeroed = (stream_score(model, val, SEQ_CHARS, carry=c, overlap=overlap) for c in (True, False))
    plain = stream_score(model, val, SEQ_CHARS, overlap=0).mean if overlap else carried.mean
    return {"val_loss": carried.mean, "zeroed": zeroed.mean, "plain": plain, "overlap": overlap,
            "early_excess": carried.early_excess(), "targets": int(carried.counts.sum()),
            "per_window": carried.per_window().tolist(), "per_window_zeroed": zeroed.per_window().tolist(),
            "per_window_gain_se": zeroed.gain_se(carried).tolist(),
            "per_position": carried.per_position()}


def score_onnx(path: Path, data: str | None, threads: int, overlap: int | None = None) -> dict:
    """Full-val cross-entropy of an exported file, streamed through the runtime's decoder (torch-free) with
    the file's overlap (or `overlap`) and with none: the val text in consecutive 1,280-character sequences,
    all of them fed in lockstep one id a step."""
    from picogpt.data.text import load_token_data
    from picogpt.runtime.decoder import OnnxDecoder

    dec = OnnxDecoder(path, threads=threads, overlap=overlap)
    val = load_token_data(data, dec.tokenizer, SEQ_CHARS, "data")[0].val
    total, count = runtime_loss(dec, val)
    plain = runtime_loss(OnnxDecoder(path, threads=threads, overlap=0), val)[0] / count if dec.overlap else None
    return {"file": str(path), "val_loss": total / count, "plain": plain if plain is not None else total / count,
            "overlap": dec.overlap, "targets": count, "quantization": dec.metadata.get("quantization", "none")}


def runtime_loss(dec, val) -> tuple[float, int]:
    """Sum of cross-entropies and target count of `val`, fed through `dec` one id a step."""
    import numpy as np

    from picogpt.windows import stream_batches

    total, count = 0.0, 0
    # 64 streams in lockstep bound the memory; each reads its lead (the overlap before it) unscored
    for xs, ys, lead in stream_batches(val, SEQ_CHARS, batch_size=64, lead=dec.overlap):
        state = dec.new_state(xs.shape[0])
        if lead:
            dec.feed(xs[:, :lead], state)
        for t in range(ys.shape[1]):
            logits = dec.feed(xs[:, lead + t : lead + t + 1], state).astype(np.float64)
            logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
            total += float((logz - logits[np.arange(len(ys)), ys[:, t]]).sum())
            count += len(ys)
    return total, count


def run_one(recipe: str, preset: str | None, minutes: float, out: Path, data: str | None, threads: int,
            overlap: int | None = None) -> dict:
    """Train one (recipe, preset) for `minutes` in a child process, then score it in another."""
    args, _ = RECIPES[recipe]
    cmd = [sys.executable, "-m", "picogpt.train", "--out", str(out), "--max-minutes", str(minutes), "--quiet",
           "--no-report", "--threads", str(threads), *args, *(["--model", preset] if preset else [])]
    if data:
        cmd += ["--dataset", "text", "--data", data]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PicoError(f"{recipe}/{preset}: training failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    wall = time.perf_counter() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    header = proc.stdout.splitlines()[0]
    score_cmd = [sys.executable, "-m", "picogpt.bench.quality", "--score", str(out / "ckpt.pt"),
                 "--threads", str(threads), *(["--overlap", str(overlap)] if overlap is not None else []),
                 *(["--data", data] if data else [])]
    scored = subprocess.run(score_cmd, capture_output=True, text=True)
    if scored.returncode != 0:
        raise PicoError(f"{recipe}/{preset}: scoring failed: {(scored.stderr.strip().splitlines() or ['?'])[-1]}")
    last = log[-1]
    per_step = int(header.split(" tokens per step")[0].split()[-1].replace(",", ""))
    return {"recipe": recipe, "preset": preset or "custom", "minutes": minutes, "steps": last["step"],
            "train_s": last["elapsed_s"], "wall_s": round(wall, 1), "tokens_per_step": per_step,
            "tokens_per_s": last["step"] * per_step / max(1e-9, last["elapsed_s"]),
            "params_m": float(header.split("M parameters")[0].split()[-1]),
            "curve": [(r["elapsed_s"], r["val_loss"]) for r in log], **json.loads(scored.stdout.splitlines()[-1])}


def gains(row: dict) -> list[float]:
    """What the carried context vector gains over zeros on windows 2.. (zeroed - carried; negative: worse)."""
    return [z - c for c, z in list(zip(row["per_window"], row["per_window_zeroed"]))[1:]]


def worse_windows(row: dict) -> int:
    """Windows 2.. where the carried vector scores worse than zeros by more than 1e-4 (should be 0)."""
    return sum(g < -1e-4 for g in gains(row))


def table_lines(rows: list[dict]) -> list[str]:
    """A markdown table of the runs, best val loss first within each budget."""
    lines = ["| min | recipe | preset | params | steps | tok/s | val (overlap) | val (plain) | val (zeroed) | "
             "windows 2+ worse | least gain, windows 2+ (± se) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["minutes"], r["val_loss"])):
        lines.append(f"| {r['minutes']:g} | {r['recipe']} | {r['preset']} | {r['params_m']:.2f}M | {r['steps']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['val_loss']:.4f} ({r.get('overlap', 0)}) | "
                     f"{r.get('plain', r['val_loss']):.4f} | {r['zeroed']:.4f} | {worse_windows(r)} | "
                     f"{least_gain(r)} |")
    return lines


def least_gain(row: dict) -> str:
    """The worst window's gain, with its standard error over the val sequences (rows scored since it is kept)."""
    g = gains(row)
    k = min(range(len(g)), key=g.__getitem__)
    se = row.get("per_window_gain_se")
    return f"{g[k]:+.5f}" + (f" ± {se[k + 1]:.5f}" if se else "")


def write_plot(path: Path, rows: list[dict]) -> None:
    """Val loss (the training log's estimate) against wall time, one line per run; the full-val score as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for r in rows:
        t, v = zip(*r["curve"])
        line, = ax.plot([x / 60 for x in t], v, label=f"{r['recipe']}/{r['preset']} ({r['minutes']:g} min)")
        ax.plot(r["train_s"] / 60, r["val_loss"], "o", color=line.get_color())
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("val loss (nats/char)")
    ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    ax.set_title("PicoGPT: val loss per CPU-minute (dots: full val split, streamed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, "picogpt-bench")


def parse_minutes(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PicoError(f"--minutes takes a comma-separated list of numbers, got {text!r}") from None
    if not values or any(not 0 < v < float("inf") for v in values):
        raise PicoError(f"--minutes needs positive numbers, got {text!r}")
    return values


def plan(recipes: list[str], presets: list[str] | None) -> list[tuple[str, str | None]]:
    """(recipe, preset) pairs to run; `presets` narrows the recipes that take a preset."""
    runs = []
    for name in recipes:
        if name not in RECIPES:
            raise PicoError(f"unknown recipe {name!r}; choose from: {', '.join(RECIPES)}")
        own = RECIPES[name][1]
        runs += [(name, None)] if own is None else [(name, p) for p in own if presets is None or p in presets]
    return runs


@click.command("quality")
@click.option("--minutes", "minutes_text", default="2,10", show_default=True, help="Wall-time budgets, e.g. 2,10.")
@click.option("--recipes", default="picogpt,seed,nanogpt", show_default=True,
              help=f"Any of: {', '.join(RECIPES)}.")
@click.option("--presets", default=None, help="Only these presets (default: each recipe's list).")
@click.option("--data", default=None, help="Text file (default: tinyshakespeare, as picogpt-train finds it).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/quality"), show_default=True,
              help="Folder for the runs' checkpoints and logs.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), default=None)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None)
@click.option("--onnx", "onnx_files", type=click.Path(path_type=Path), multiple=True,
              help="Only score these exported files on the full val split through the runtime (no training).")
@click.option("--overlap", type=int, default=None,
              help="Characters each new window re-reads (default: a file's own; a quarter of a window for a "
                   "trained run).")
@cli_errors
def quality(minutes_text: str, recipes: str, presets: str | None, data: str | None, threads: int, out: Path,
            json_path: Path | None, md_path: Path | None, plot_path: Path | None,
            onnx_files: tuple[Path, ...], overlap: int | None) -> None:
    """Train each recipe for the same wall time, one after another, and score each on the full val split."""
    from picogpt.bench.cli import check_outputs

    check_outputs(((json_path, "--json"), (md_path, "--markdown"), (plot_path, "--plot")),
                  [("--data", data), *(("--onnx", f) for f in onnx_files)])
    if onnx_files:
        scores = []
        for f in onnx_files:
            r = score_onnx(f, data, threads, overlap)
            scores.append({"file": str(f), **r})
            click.echo(f"{f}: val {r['val_loss']:.4f} with overlap {r['overlap']}, {r['plain']:.4f} plain, on "
                       f"{r['targets']:,} characters ({r['quantization']}, streamed through the runtime in "
                       "1,280-character sequences)")
        write_result(json_path, envelope("score", "picogpt-bench", scores))
        return
    from picogpt.bench.system_info import busy_report, machine_report

    check_threads(threads)
    if overlap is not None:
        check_overlap(overlap, GPTConfig.context_len)
    make_output_dir(out)
    minutes = parse_minutes(minutes_text)
    runs = plan([r for r in recipes.split(",") if r], presets.split(",") if presets else None)
    if not runs:
        raise PicoError("nothing to run: no recipe takes the presets given")
    for m in minutes:  # never train into a run folder of an earlier benchmark
        for recipe, preset in runs:
            if (out / f"{recipe}-{preset or 'custom'}-{m:g}min" / "ckpt.pt").exists():
                raise PicoError(f"--out {out} holds runs of an earlier benchmark: choose another --out, or remove "
                                "them")
    click.echo(machine_report()["text"])
    rows = []
    for m in minutes:
        for recipe, preset in runs:
            busy = busy_report(use_load=False)
            if busy:
                click.echo(f"warning: the machine is busy ({busy}); this run's figures are unreliable", err=True)
            click.echo(f"training {recipe}/{preset or 'custom'} for {m:g} min ...", err=True)
            rows.append(run_one(recipe, preset, m, out / f"{recipe}-{preset or 'custom'}-{m:g}min", data, threads,
                                overlap))
            click.echo(f"  val {rows[-1]['val_loss']:.4f} (zeroed {rows[-1]['zeroed']:.4f}) "
                       f"after {rows[-1]['steps']:,} steps", err=True)
    lines = table_lines(rows)
    click.echo("\n".join(lines))
    write_result(json_path, envelope("quality", "picogpt-bench", rows))
    if md_path:
        write_atomic(md_path, MARKDOWN_MARKER + "\n" + "\n".join(lines) + "\n", "--markdown")
    if plot_path:
        write_plot(plot_path, rows)


@click.command()
@click.option("--score", "ckpt", type=click.Path(path_type=Path), required=True)
@click.option("--data", default=None)
@click.option("--threads", type=int, default=2)
@click.option("--overlap", type=int, default=None)
def _child(ckpt: Path, data: str | None, threads: int, overlap: int | None) -> None:
    print(json.dumps(score_checkpoint(ckpt, data, threads, overlap)))


if __name__ == "__main__":
    _child()
