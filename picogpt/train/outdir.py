"""A run's folder: OUT/ckpt.pt, OUT/log.jsonl and OUT/loss.png. Refuse to start over a run by accident,
remove what a kill left, keep the log whole and monotonic across kills and resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from picogpt.errors import PicoError
from picogpt.paths import RunLock
from picogpt.train.plot import write_loss_plot

RUN_FILES = ("ckpt.pt", "log.jsonl", "loss.png")


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> RunLock:
    """Check OUT is writable, lock it for this run, refuse to start over an earlier run (or files that are not a
    run's) by accident, and remove the temp files a killed run left. Returns the lock, held for the run."""
    if not str(out):
        raise PicoError("--out is empty: give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise PicoError(f"--out {out} is not writable ({exc.strerror or exc})") from None
    lock = RunLock(out, "--out")  # a second run on OUT stops here, before it touches anything
    for name in RUN_FILES:
        check_run_file(out / name)
    found = [name for name in RUN_FILES if (out / name).exists()]
    if "ckpt.pt" in found and not resume and not overwrite:
        raise PicoError(f"{out} already holds a checkpoint: continue it with --resume, or start over with "
                        "--overwrite (or choose another --out)")
    if found and "ckpt.pt" not in found and not overwrite:
        raise PicoError(f"--out {out} holds {' and '.join(found)} but no checkpoint: not a run picogpt-train can "
                        "continue; replace them with --overwrite, or choose another --out")
    # Only this process holds the lock: every temp file in OUT is a leftover of a run that was killed.
    for stale in [*out.glob(".ckpt-*.tmp"), out / "loss.tmp.png", out / ".log.jsonl.tmp"]:
        stale.unlink(missing_ok=True)
    return lock


def check_run_file(path: Path) -> None:
    """Refuse a run file that cannot be replaced: a folder in its place, or a file that cannot be written
    (read-only, immutable), before any training rather than at the first save."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_file():
        raise PicoError(f"--out: {path} is {'a folder' if path.is_dir() else 'not a regular file'}, where the run "
                        f"writes its {path.name}: move it away, or choose another --out")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # opens for writing, writes nothing
    except OSError as exc:
        raise PicoError(f"--out: {path} cannot be written ({exc.strerror or exc}): make it writable, or choose "
                        "another --out") from None


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
    """Add one eval record to OUT/log.jsonl and redraw OUT/loss.png from the whole log (a full disk: one line;
    a torn last record is dropped on --resume)."""
    log_path = out / "log.jsonl"
    try:
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        write_loss_plot(log_path, out / "loss.png")
    except OSError as exc:
        raise PicoError(f"--out {out}: writing the log failed ({exc.strerror or exc}); the last checkpoint "
                        "is kept: free space, then continue with --resume") from None
