"""A run's folder: OUT/ckpt.pt, OUT/log.jsonl and OUT/loss.png. Refuse to start over a run by accident,
remove what a kill left, keep the log whole and monotonic across kills and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from picogpt.errors import PicoError
from picogpt.train.plot import write_loss_plot


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Check OUT is writable, refuse to start over an earlier run by accident, remove temp files a kill left."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PicoError(f"--out {out} is not writable ({exc.strerror or exc})") from None
    for stale in [*out.glob(".ckpt-*.tmp"), out / "loss.tmp.png", out / ".log.jsonl.tmp"]:
        stale.unlink(missing_ok=True)
    if (out / "ckpt.pt").exists() and not resume and not overwrite:
        raise PicoError(f"{out} already holds a checkpoint: continue it with --resume, or start over with "
                        "--overwrite (or choose another --out)")


def repair_log(log_path: Path, step: int) -> bool:
    """Keep the log's whole records up to the checkpoint's step: drop a torn last line (a kill or a full
    disk leaves one) and records a killed run wrote after its last checkpoint, so steps stay monotonic.
    Returns whether the checkpoint's own step is logged already (then the resumed run does not log it again)."""
    if not log_path.exists():
        return False
    kept = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(json.dumps(record))
    tmp = log_path.with_name(".log.jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, log_path)
    return bool(kept) and json.loads(kept[-1])["step"] == step


def append_log(out: Path, record: dict[str, Any]) -> None:
    """Add one eval record to OUT/log.jsonl and redraw OUT/loss.png from the whole log."""
    log_path = out / "log.jsonl"
    with log_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    write_loss_plot(log_path, out / "loss.png")
