"""Checkpoints: the one reader for train, eval, export and bench, and the atomic writer.

Three layouts are read, all with `torch.load(weights_only=True)` so no arbitrary pickle code runs:
picogpt-train's (a dict of plain types and tensors: format tag, config, tokenizer JSON, model and optimizer
state, RNG states, step, recipe and data settings), nanoGPT's `ckpt.pt`, and the original PicoGPT
`log.pkl` (`{"best_weight": state_dict, ...}`).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field, replace
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


def _torch_load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PicoError(f"checkpoint not found: {path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PicoError(f"checkpoint {path} is corrupt or truncated, or not a torch checkpoint "
                        f"({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise PicoError(f"{path} does not hold a checkpoint dict")
    return obj


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A picogpt-train checkpoint as stored (what --resume needs); any problem is a one-line PicoError."""
    path = Path(path)
    return _checked(path, _torch_load(path))


def _checked(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    if ckpt.get("format") != CKPT_FORMAT:
        raise PicoError(f"{path} is not a picogpt-train checkpoint (no '{CKPT_FORMAT}' tag)")
    for key in ("config", "tokenizer", "model"):
        if key not in ckpt:
            raise PicoError(f"checkpoint {path} lacks '{key}'")
    return ckpt


@dataclass
class Loaded:
    """A checkpoint of any layout, rebuilt for inference (eval mode, no dropout)."""

    model: GPT
    tokenizer: CharTokenizer
    source: str  # "picogpt", "nanogpt" or "picogpt-seed"
    step: int | None
    val_loss: float | None
    state: dict[str, Any] = field(default_factory=dict, repr=False)  # picogpt's: the stored dict


def read_checkpoint(path: str | os.PathLike) -> Loaded:
    """Load a checkpoint of any of the three layouts, or fail with one clear line."""
    path = Path(path)
    obj = _torch_load(path)
    if obj.get("format") == CKPT_FORMAT:
        ckpt = _checked(path, obj)
        # Dropout is a training-time regulariser: the rebuilt model is for inference and export.
        config = replace(GPTConfig.from_dict(ckpt["config"]), dropout=0.0)
        model = _load_weights(GPT(config), ckpt["model"], "checkpoint weights do not fit its config")
        return Loaded(model.eval(), CharTokenizer.from_json(ckpt["tokenizer"]), "picogpt", ckpt.get("step"),
                      ckpt.get("val_loss"), ckpt)
    if "model" in obj and "model_args" in obj:  # nanoGPT's train.py
        return _nanogpt(path, obj)
    if "best_weight" in obj:  # the original PicoGPT's log.pkl
        return Loaded(_model_from_state_dict(obj["best_weight"], None), CharTokenizer(), "picogpt-seed", None, None)
    raise PicoError(f"{path}: unknown checkpoint layout (keys: {sorted(obj)[:5]})")


def _nanogpt(path: Path, obj: dict[str, Any]) -> Loaded:
    args = obj["model_args"]
    if not isinstance(args, dict) or not isinstance(obj["model"], dict):
        raise PicoError(f"{path}: a nanoGPT checkpoint whose model_args or model is not a dict")
    model = _model_from_state_dict(obj["model"], args.get("n_head"))
    if model.config.vocab_size != CharTokenizer().vocab_size:
        raise PicoError(f"{path}: a nanoGPT checkpoint with a vocabulary of {model.config.vocab_size}; PicoGPT's "
                        f"tokenizer has {CharTokenizer().vocab_size} characters, so its ids would mean other "
                        "characters (train with picogpt-train, or nanoGPT on PicoGPT's vocabulary)")
    best = obj.get("best_val_loss")
    return Loaded(model, CharTokenizer(), "nanogpt", obj.get("iter_num"), None if best is None else float(best))


def config_from_state_dict(sd: dict[str, torch.Tensor], n_head: int | None = None) -> GPTConfig:
    """Infer the shape from tensor sizes (n_head cannot be seen in them: taken from args or the default)."""
    try:
        vocab, n_embd = sd["transformer.wte.weight"].shape
        n_positions = sd["transformer.wpe.weight"].shape[0]
    except KeyError as exc:
        raise PicoError(f"checkpoint of another architecture: no {exc.args[0]} tensor") from None
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    return GPTConfig(context_len=n_positions - 1, vocab_size=vocab, n_layer=len(layers),
                     n_head=n_head or GPTConfig.n_head, n_embd=n_embd,
                     bias="transformer.h.0.attn.c_attn.bias" in sd)


def _model_from_state_dict(sd: dict[str, torch.Tensor], n_head: int | None) -> GPT:
    sd = {k.removeprefix("_orig_mod."): v for k, v in sd.items() if not k.endswith(".attn.bias")}
    sd.setdefault("lm_head.weight", sd.get("transformer.wte.weight"))
    model = GPT(config_from_state_dict(sd, n_head))
    expected, got = set(model.state_dict()), set(sd)
    if expected != got:
        diff = sorted((expected - got) | (got - expected))[:3]
        raise PicoError(f"checkpoint of another architecture: tensors {diff} do not match PicoGPT's")
    return _load_weights(model, sd, "checkpoint of another architecture").eval()


def _load_weights(model: GPT, sd: dict[str, torch.Tensor], what: str) -> GPT:
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise PicoError(f"{what}: {str(exc).splitlines()[-1].strip()[:160]}") from None
    return model
