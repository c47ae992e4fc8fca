"""`picogpt-export CHECKPOINT -o model.onnx`: export, verify against torch, quantize, write atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np

from picogpt import paths
from picogpt.checkpoint import Loaded, read_checkpoint
from picogpt.contract import (
    FINGERPRINT_CHARS,
    FINGERPRINT_PROMPT,
    LAYOUTS,
    META_PREFIX,
    fused_unsupported,
    metadata_dict,
)
from picogpt.data import DataConfig
from picogpt.data.text import find_tinyshakespeare, load_token_data
from picogpt.errors import PicoError, cli_errors, one_line_usage, path_type
from picogpt.export.build import build_files, set_metadata
from picogpt.export.quantize import CALIBRATED, METHODS
from picogpt.export.verify import (
    AUTO_MAX_NATS,
    FP32_MAX_LOGIT_DIFF,
    Parity,
    choose_auto,
    compare,
    format_table,
    time_step,
)
from picogpt.generation import greedy_text
from picogpt.paths import check_output, report_json, write_atomic
from picogpt.runtime.decoder import OnnxDecoder
from picogpt.system import check_threads
from picogpt.windows import resolve_overlap

CALIBRATION_SEQUENCES, CALIBRATION_WINDOWS = 64, 3  # GPTQ's calibration: 64 x 384 training characters


def text_splits(loaded: Loaded, data: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(train ids, val ids) of `data`, read and split as picogpt-train reads it (a text file 90/10,
    or a prepared train.bin with its val.bin). Default: the text file the checkpoint was trained on (if it
    is still there), else tinyshakespeare if cached; None if no text."""
    stored = DataConfig.from_checkpoint(loaded.state)
    if data is None and stored is not None and stored.path is not None and Path(stored.path).is_file():
        data = stored.path
    if data is None:
        try:
            data = str(find_tinyshakespeare(download=False))
        except PicoError:
            return None
    # seq_len 1 accepts any text; sample_windows refuses windows longer than a split
    tokens, _ = load_token_data(data, loaded.tokenizer, seq_len=1, name="--data")
    return tokens.train, tokens.val


def sample_windows(ids: np.ndarray, length: int, batch: int, seed: int) -> np.ndarray | None:
    """[batch, length] slices of `ids` at random starts; None when `ids` is too short."""
    if len(ids) <= length:
        return None
    starts = np.random.default_rng(seed).integers(0, len(ids) - length, size=batch)
    return np.stack([ids[s : s + length] for s in starts]).astype(np.int64)


def verification_ids(loaded: Loaded, splits: tuple[np.ndarray, np.ndarray] | None, windows: int,
                     batch: int) -> tuple[np.ndarray, bool]:
    """[batch, windows*context_len + 1] ids from the val split of real text, else random ids."""
    n = windows * loaded.model.config.context_len + 1
    ids = sample_windows(splits[1], n, batch, seed=0) if splits is not None else None
    if ids is not None:
        return ids, True
    click.echo("note: no validation text found (--data); verifying on random ids, no val-loss figure", err=True)
    return np.random.default_rng(0).choice(loaded.tokenizer.text_ids(), size=(batch, n)).astype(np.int64), False


def remove_stale_work_dirs(folder: Path) -> None:
    """Remove the work folders of exports that were killed (kill -9 skips every cleanup): their
    names carry the writer's pid, and a folder whose process is gone is stale."""
    paths.remove_stale_work_dirs(folder, ".picogpt-export-")


def is_picogpt_export(path: Path) -> bool:
    """True if `path` is an .onnx file this tool wrote (it carries `picogpt.*` metadata)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, truncated, unreadable: not ours
        return False
    return any(p.key.startswith(META_PREFIX) for p in model.metadata_props)


def check_output_path(out: Path, checkpoint: Path) -> None:
    """Refuse before any work: a missing or read-only folder, the input itself, or a file that is not an export."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise PicoError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise PicoError(f"output folder is not writable: {folder}")
    if out.is_dir():
        raise PicoError(f"output path is a folder: {out}")
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise PicoError(f"-o {out} is the checkpoint being exported: choose another output path")
    if out.exists() and not is_picogpt_export(out):
        raise PicoError(f"-o {out} exists and is not an earlier picogpt export: refusing to overwrite it "
                        "(remove it, or choose another output path)")


def check_arguments(output: Path, checkpoint: Path, json_path: Path | None, data: str | None, opset: int,
                    threads: int) -> None:
    """Every flag, before the checkpoint is read: outputs that destroy nothing, an opset this onnx can write."""
    import onnx

    check_output_path(output, checkpoint)
    check_output(json_path, "--json", [("CHECKPOINT", checkpoint), ("--data", data)], [("-o", output)])
    newest = onnx.defs.onnx_opset_version()
    if not 17 <= opset <= newest:
        raise PicoError(f"--opset must be between 17 and {newest} (the newest this onnx package writes), got {opset}")
    check_threads(threads)


def verify_candidates(loaded: Loaded, candidates: dict[str, Path], splits: tuple[np.ndarray, np.ndarray] | None,
                      threads: int) -> dict[str, Parity]:
    """Compare every candidate file with torch and time its step; refuse when the fp32 graph is not exact."""
    click.echo("verifying against torch (teacher-forced logits, greedy text, val loss) ...")
    ids, real = verification_ids(loaded, splits, windows=3, batch=2)
    prompt = loaded.tokenizer.encode(FINGERPRINT_PROMPT)
    results: dict[str, Parity] = {}
    for name, path in candidates.items():
        r = compare(loaded.model, path, name, ids, real, prompt, greedy_len=320, threads=threads)
        r.ms_per_step = time_step(OnnxDecoder(path, threads=threads), past=loaded.model.config.context_len)
        results[name] = r
    click.echo(format_table(list(results.values())))
    r = results["none"]
    if not r.fp32_ok:
        raise PicoError(f"fp32 parity failed: max |dlogit| {r.max_abs_logit:.2e} (limit "
                        f"{FP32_MAX_LOGIT_DIFF:.0e}), greedy text equal for {r.greedy_equal}/{r.greedy_len}")
    return results


@click.command(cls=one_line_usage(click.Command), context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=path_type())
@click.option("-o", "--output", type=path_type(), default=Path("model.onnx"), show_default=True)
@click.option("--quantize", "method", type=click.Choice(["none", *METHODS, "auto"]), default="int8",
              show_default=True,
              help="int8: per-column int8 codes run as integers (the fastest native file within 1% top-1 of fp32). "
                   "int4-gptq: int4 calibrated on --data (GPTQ). int8-weights: the same codes computed in fp32 "
                   "(picogpt-web writes it from any file). none: fp32. auto: time the candidates here, keep the "
                   "fastest within 0.02 nats.")
@click.option("--graph", "layout", type=click.Choice(LAYOUTS), default="fused", show_default=True,
              help="fused: onnxruntime contrib kernels, in-place KV cache (fast). portable: standard ONNX "
                   "ops from torch.onnx.export (any runtime).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--verify/--no-verify", default=True, show_default=True, help="Compare with torch before writing.")
@click.option("--data", type=str, default=None,
              help="Text: its last 10% verifies, its first 90% calibrates int4-gptq (default: the text file the "
                   "checkpoint was trained on, else tinyshakespeare if cached).")
@click.option("--threads", type=int, default=1, show_default=True,
              help="onnxruntime threads for verification and timing.")
@click.option("--json", "json_path", type=path_type(), default=None,
              help="Also write the verification table and the chosen quantization as JSON.")
@click.option("--overlap", type=int, default=None,
              help="Characters each new window re-reads, written into the file for the runtime and the page "
                   "(default: a quarter of a window, 32 of 128; 0 = the plain protocol).")
@cli_errors
def main(checkpoint: Path, output: Path, method: str, layout: str, opset: int, verify: bool, data: str | None,
         threads: int, json_path: Path | None, overlap: int | None) -> None:
    """Export a checkpoint to one self-describing ONNX file (prefill + decode with the context vector)."""
    check_arguments(output, checkpoint, json_path, data, opset, threads)
    loaded = read_checkpoint(checkpoint)
    cfg = loaded.model.config
    if cfg.context_len < 2:
        raise PicoError(f"{checkpoint} has windows of {cfg.context_len} character: the runtime needs 2 at least")
    overlap = resolve_overlap(overlap, cfg.context_len)
    why = fused_unsupported(cfg) if layout == "fused" else None
    if why:
        raise PicoError(f"{why}: export with --graph portable (standard ONNX ops, any head size)")
    click.echo(f"loaded {loaded.source} checkpoint {checkpoint} (step {loaded.step}, "
               f"{cfg.num_params() / 1e6:.2f}M parameters)")
    remove_stale_work_dirs(output.parent if str(output.parent) else Path("."))
    try:
        export_to(loaded, checkpoint, output, method, layout, opset, verify, data, threads, json_path, overlap)
    except OSError as exc:  # a full disk or a folder gone while writing: the earlier -o file is untouched
        raise PicoError(f"-o {output}: writing failed ({exc.strerror or exc}); nothing was replaced") from None


def export_to(loaded: Loaded, checkpoint: Path, output: Path, method: str, layout: str, opset: int, verify: bool,
              data: str | None, threads: int, json_path: Path | None, overlap: int) -> None:
    """Build, verify and write the file (and the --json report) through a work folder beside the output."""
    import onnx
    import torch

    cfg = loaded.model.config
    folder = output.parent if str(output.parent) else Path(".")
    work = Path(tempfile.mkdtemp(prefix=f".picogpt-export-{os.getpid()}-", dir=folder))
    try:
        torch.manual_seed(0)
        wanted = list(METHODS) if method == "auto" else ([method] if method != "none" else [])
        needs_text = verify or method == "auto" or method in CALIBRATED
        splits = text_splits(loaded, data) if needs_text else None
        calibration = None if splits is None else sample_windows(
            splits[0], CALIBRATION_WINDOWS * cfg.context_len, CALIBRATION_SEQUENCES, seed=1)
        if method == "auto" and calibration is None:
            wanted = [m for m in wanted if m not in CALIBRATED]
            click.echo(f"note: no text for calibration (--data); auto leaves out {', '.join(CALIBRATED)}", err=True)
        candidates = build_files(loaded, work, wanted, layout, opset, log=click.echo, calibration=calibration,
                                 overlap=overlap)

        results = verify_candidates(loaded, candidates, splits, threads) if verify or method == "auto" else {}
        chosen = method
        if method == "auto":
            chosen = choose_auto(results)
            click.echo(f"auto: chose {chosen} (fastest within {AUTO_MAX_NATS} nats of torch)")
        final = candidates[chosen]
        decoder = OnnxDecoder(final, threads=threads)
        fingerprint = greedy_text(decoder, decoder.tokenizer, FINGERPRINT_PROMPT, FINGERPRINT_CHARS)
        set_metadata(final, metadata_dict(cfg, loaded.tokenizer, chosen, loaded.step, loaded.val_loss, fingerprint,
                                          layout, overlap))
        onnx.checker.check_model(str(final))
        os.replace(final, output)  # only a verified file ever appears at the output path
        click.echo(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB, quantization {chosen})")
        if json_path:
            rows = [{**asdict(r), "val_loss_delta": r.val_loss_delta} for r in results.values()]
            report = {"output": str(output), "quantization": chosen, "verification": rows}
            write_atomic(json_path, report_json(report, "picogpt-export"), "--json")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
