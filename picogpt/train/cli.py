"""`picogpt-train` (and `python -m picogpt.train`): the flags, turned into a recipe, a model and the data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from picogpt.config import GPTConfig
from picogpt.data import DATASETS, DataConfig
from picogpt.data.wikipedia import WIKI_DEFAULT_CONFIG, WIKI_DEFAULT_NAME, check_val_percent
from picogpt.errors import PicoError, cli_errors, one_line_usage, path_type
from picogpt.train.loop import RunOptions, train
from picogpt.train.matmul import KERNELS
from picogpt.train.presets import DEFAULT_PRESET, PRESETS, preset_of, resolve_preset
from picogpt.train.recipe import RESUME_HELP, TrainConfig, check_shape


@click.command(cls=one_line_usage(click.Command), context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", type=click.Choice(DATASETS), default="tinyshakespeare",
              show_default=True)
@click.option("--data", "path", type=str, default=None,
              help="Local UTF-8 text file (or a .bin from picogpt-prepare). Default: tinyshakespeare, "
                   "found in $PICOGPT_DATA or the cache, else downloaded.")
@click.option("--data-files", "files", type=str, default=None,
              help="Glob of local parquet/JSONL files with Wikipedia's schema (id, url, title, text).")
@click.option("--wiki-name", default=WIKI_DEFAULT_NAME, show_default=True)
@click.option("--wiki-config", default=WIKI_DEFAULT_CONFIG, show_default=True)
@click.option("--val-percent", type=float, default=1.0, show_default=True,
              help="Wikipedia: percent of articles held out for validation (by a hash of the id).")
@click.option("--out", type=path_type(), default=Path("out"), show_default=True)
@click.option("--model", default=None,
              help=f"Model preset: {', '.join(PRESETS)}, or auto (the preset measured best for --max-minutes). "
                   f"Default: auto with --max-minutes, else {DEFAULT_PRESET} (the seed's 6.34M model).")
@click.option("--optimizer", default=TrainConfig.optimizer, show_default=True,
              help="muon (fp32 Muon for the hidden matrices, AdamW for the rest) or adamw.")
@click.option("--max-iters", type=int, default=None,
              help=f"Optimizer steps (default {TrainConfig.max_iters}; on --resume, the stored value).")
@click.option("--max-minutes", type=float, default=None,
              help="Stop after this wall time; the LR schedule is fitted so its cooldown ends then.")
@click.option("--batch-size", type=int, default=None, help="Sequences per step (default: the preset's).")
@click.option("--seq-windows", type=int, default=None,
              help="Windows per training sequence (gradients flow through all their context vectors; default: the "
                   "preset's: " + ", ".join(f"{k} {p.seq_windows}" for k, p in PRESETS.items()) + ").")
@click.option("--cooldown-windows", type=int, default=TrainConfig.cooldown_windows, show_default=True,
              help="wsd: windows per sequence during the cooldown, at the same tokens per step (0: --seq-windows).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default: the preset's).")
@click.option("--schedule", type=click.Choice(["wsd", "cosine"]), default=TrainConfig.schedule, show_default=True,
              help="wsd: warmup, stable, linear cooldown to zero; cosine: nanoGPT's decay to lr/10.")
@click.option("--cooldown-frac", type=float, default=TrainConfig.cooldown_frac, show_default=True,
              help="wsd: the share of the steps spent cooling down.")
@click.option("--warmup-iters", type=int, default=TrainConfig.warmup_iters, show_default=True)
@click.option("--eval-interval", type=int, default=TrainConfig.eval_interval, show_default=True)
@click.option("--eval-iters", type=int, default=TrainConfig.eval_iters, show_default=True)
@click.option("--threads", type=int, default=None,
              help="torch.set_num_threads; default: the physical cores (more threads than cores only adds contention).")
@click.option("--matmul", type=click.Choice(KERNELS), default="auto", show_default=True,
              help="fp32 library for the linears: auto times BLAS (MKL) and oneDNN at start and keeps the faster.")
@click.option("--seed", type=int, default=TrainConfig.seed, show_default=True)
@click.option("--resume", is_flag=True, help=RESUME_HELP)
@click.option("--overwrite", is_flag=True, help="Start a new run in an OUT that already holds one (replacing it).")
@click.option("--context-len", type=int, default=None, help="Override the preset's shape (as --n-layer etc.).")
@click.option("--n-layer", type=int, default=None)
@click.option("--n-head", type=int, default=None)
@click.option("--n-embd", type=int, default=None)
@click.option("--dropout", type=float, default=GPTConfig.dropout, show_default=True,
              help="Training-only regulariser (export and inference run without it).")
@click.option("--report/--no-report", default=True, show_default=True,
              help="At the end, print val loss per window index with the carried vs zeroed context vector.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cli_errors
def main(dataset: str, path: str | None, files: str | None, wiki_name: str, wiki_config: str,
         val_percent: float, out: Path, model: str | None, optimizer: str, max_iters: int | None,
         max_minutes: float | None, batch_size: int | None, seq_windows: int | None, cooldown_windows: int,
         lr: float | None, schedule: str, cooldown_frac: float, warmup_iters: int, eval_interval: int,
         eval_iters: int, threads: int | None, matmul: str, seed: int,
         resume: bool, overwrite: bool, context_len: int | None, n_layer: int | None, n_head: int | None,
         n_embd: int | None, dropout: float, report: bool, quiet: bool) -> None:
    """Train PicoGPT on tinyshakespeare, a local text file, or streamed Wikipedia (fp32, CPU)."""
    ctx = click.get_current_context()
    given = {name for name in ctx.params if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    if max_minutes is not None and max_minutes <= 0:  # before the preset table is read with it
        raise PicoError(f"--max-minutes must be > 0, got {max_minutes}")
    preset = resolve_preset(model or ("auto" if max_minutes else DEFAULT_PRESET), max_minutes)
    shape = {"context_len": context_len, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "dropout": dropout}
    check_shape(shape)
    if dataset == "wikipedia":
        check_val_percent(val_percent)
    try:
        config = PRESETS[preset].config(**shape)
    except PicoError as exc:  # n_embd not divisible by n_head: both flags
        raise PicoError(f"--n-embd / --n-head: {exc}") from None
    if resume and not given & {"model", *shape}:
        config = None  # the checkpoint's model
    tc = TrainConfig(model=preset_of(config) if config else preset, optimizer=optimizer,
                     batch_size=PRESETS[preset].batch_size if batch_size is None else batch_size,
                     seq_windows=PRESETS[preset].seq_windows if seq_windows is None else seq_windows,
                     cooldown_windows=cooldown_windows,
                     lr=PRESETS[preset].lr if lr is None else lr,
                     schedule=schedule, cooldown_frac=cooldown_frac, warmup_iters=warmup_iters,
                     max_iters=TrainConfig.max_iters if max_iters is None else max_iters, eval_interval=eval_interval,
                     eval_iters=eval_iters, seed=seed)
    # stored resolved: --resume and picogpt-eval from another folder read the same file
    path = str(Path(path).resolve()) if path else path
    data = DataConfig(dataset, path, files, wiki_name, wiki_config, val_percent)
    explicit = given & (set(TrainConfig.__dataclass_fields__) | set(DataConfig.FLAGS))
    opts = RunOptions(out, threads, max_minutes, resume, overwrite, progress=not quiet, matmul=matmul,
                      max_iters_set=max_iters is not None, explicit=frozenset(explicit))
    record = train(tc, config, data, opts)
    if record.get("signal"):
        sys.exit(128 + record["signal"])  # 130 for Ctrl-C, 143 for SIGTERM: `train && export` stops here
    if report and os.environ.get("RANK", "0") == "0":
        from picogpt.train.evaluate import report_from_checkpoint

        report_from_checkpoint(out / "ckpt.pt", batches=max(1, eval_iters // 2))


if __name__ == "__main__":
    main()
