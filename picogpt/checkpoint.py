"""Checkpoints: written atomically, loaded with `torch.load(weights_only=True)`, checked for shape.

A checkpoint is a dict of plain types and tensors only: format tag, config dict, tokenizer
JSON, model and optimizer state, RNG states, step and training metadata. Nothing in it
needs arbitrary unpickling.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.model import GPT
from picogpt.tokenizer import CharTokenizer

CKPT_FORMAT = "picogpt-ckpt-1"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CKPT_FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check a PicoGPT checkpoint; any problem is a one-line PicoError."""
    path = Path(path)
    if not path.is_file():
        raise PicoError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PicoError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise PicoError(f"{path} is not a picogpt-train checkpoint (no '{CKPT_FORMAT}' tag)")
    for key in ("config", "tokenizer", "model"):
        if key not in ckpt:
            raise PicoError(f"checkpoint {path} lacks '{key}'")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[GPT, CharTokenizer]:
    """Rebuild the model (eval mode) and tokenizer a checkpoint describes."""
    # Dropout is a training-time regulariser: the rebuilt model is for inference and export.
    config = replace(GPTConfig.from_dict(ckpt["config"]), dropout=0.0)
    model = GPT(config)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise PicoError(f"checkpoint weights do not fit its config: {str(exc).splitlines()[0]}") from None
    return model.eval(), CharTokenizer.from_json(ckpt["tokenizer"])


def load_model(path: str | os.PathLike) -> tuple[GPT, CharTokenizer, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    model, tok = model_from_checkpoint(ckpt)
    return model, tok, ckpt
