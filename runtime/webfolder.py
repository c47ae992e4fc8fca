"""The page folder of `picogpt-web`: the names in it, the escaping of what goes into its page, and which
folder may be replaced (only an empty one, or a page picogpt-web wrote with nothing else in it)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from picogpt.errors import PicoError

PAGE_FILES = ("index.html", "picogpt.js")
SIDECAR = "model.json"


def script_json(value: object) -> str:
    """JSON that is safe inside a <script> element: <, > and & as \\u escapes (the same string to JSON and JS)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_model_name(model: Path) -> str:
    """The model's file name in the page folder: URL-safe characters only (`run#1.onnx` would be fetched as
    `run`), never the name of a page file, always ending in .onnx."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", model.name).lstrip(".") or "model.onnx"
    if not name.endswith(".onnx"):
        name += ".onnx"
    return name if name not in (*PAGE_FILES, SIDECAR) else "model-" + name


def earlier_page_files(out: Path) -> set[str] | None:
    """The names an earlier page in `out` consists of, or None when `out` is not one (a model.json alone does not
    make a page: a TensorFlow.js export has one too)."""
    try:
        side = json.loads((out / SIDECAR).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(side, dict) or not {"model", "ort_web", "metadata"} <= set(side) or not isinstance(
            side["model"], str):
        return None
    return {*PAGE_FILES, SIDECAR, side["model"], "ort"}


def check_target(out: Path) -> None:
    """Refuse, before any work, an -o that cannot become the page folder: only an empty folder or a page
    picogpt-web wrote (and nothing else in it) is replaced."""
    parent = out.parent
    if out.exists() and not out.is_dir():
        raise PicoError(f"-o {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        ours = earlier_page_files(out)
        if ours is None:
            raise PicoError(f"-o {out} is a folder that picogpt-web did not write: choose an empty or new folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if foreign:
            raise PicoError(f"-o {out} holds files picogpt-web did not write ({', '.join(foreign[:3])}): they "
                            "would be deleted; move them, or choose an empty or new folder")
    if not parent.is_dir():
        raise PicoError(f"-o {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PicoError(f"-o {out} cannot be written (permission denied in {parent})")
