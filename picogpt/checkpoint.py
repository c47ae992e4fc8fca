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
from picogpt.errors import PicoError, os_cause
from picogpt.model import GPT
from picogpt.tokenizer import CharTokenizer

CKPT_FORMAT = "picogpt-ckpt-1"


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CKPT_FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # a full disk (torch's writer raises RuntimeError), a folder gone
            cause = os_cause(exc)
            why = cause.strerror if cause else "write error"
            kept = "the earlier checkpoint there is kept" if path.is_file() else "no checkpoint was written"
            raise PicoError(f"writing {path} failed ({why}); {kept}: free space, then continue with --resume") from None
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


# The stored fields and their types: a damaged or hand-edited checkpoint is refused in one line at load.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "config": (dict,), "tokenizer": (str,), "model": (dict,), "optimizer": (dict,), "train_config": (dict,),
    "data_config": (dict,), "step": (int,), "horizon": (int,), "elapsed": (int, float),
    "val_loss": (int, float, type(None)), "rng": (dict,), "world_size": (int,), "data_file": (dict, type(None))}


def _checked(path: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    if ckpt.get("format") != CKPT_FORMAT:
        raise PicoError(f"{path} is not a picogpt-train checkpoint (no '{CKPT_FORMAT}' tag)")
    for key in ("config", "tokenizer", "model"):
        if key not in ckpt:
            raise PicoError(f"checkpoint {path} lacks '{key}'")
    for key, types in FIELD_TYPES.items():
        if key in ckpt and (not isinstance(ckpt[key], types) or isinstance(ckpt[key], bool)):
            raise PicoError(f"checkpoint {path}: '{key}' is a {type(ckpt[key]).__name__}, not a "
                            f"{' or '.join(t.__name__ for t in types)}: the file is damaged")
    config = GPTConfig.from_dict(ckpt["config"])
    tokenizer = CharTokenizer.from_json(ckpt["tokenizer"])
    if tokenizer.vocab_size != config.vocab_size:
        raise PicoError(f"checkpoint {path}: its tokenizer has {tokenizer.vocab_size} ids but its config says "
                        f"vocab_size {config.vocab_size}: the file is damaged")
    check_weights(path, ckpt["model"])
    return ckpt


def check_weights(path: Path, sd: dict[str, Any]) -> None:
    """Every entry a tensor, every float tensor finite: NaN or Inf weights would only print garbage later."""
    for name, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise PicoError(f"checkpoint {path}: weight {name!r} is a {type(t).__name__}, not a tensor")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PicoError(f"checkpoint {path}: weight {name!r} holds NaN or Inf values (the run diverged before "
                            "this save): use an earlier checkpoint, or train again with a lower --lr")


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
        model = _load_weights(GPT(config), ckpt["model"], f"checkpoint {path}: its weights do not fit its config")
        return Loaded(model.eval(), CharTokenizer.from_json(ckpt["tokenizer"]), "picogpt", ckpt.get("step"),
                      ckpt.get("val_loss"), ckpt)
    if "model" in obj and "model_args" in obj:  # nanoGPT's train.py
        return _nanogpt(path, obj)
    if "best_weight" in obj:  # the original PicoGPT's log.pkl
        if not isinstance(obj["best_weight"], dict):
            raise PicoError(f"{path}: its best_weight is a {type(obj['best_weight']).__name__}, not a state dict")
        return Loaded(_model_from_state_dict(obj["best_weight"], None, path), CharTokenizer(), "picogpt-seed", None,
                      None)
    raise PicoError(f"{path}: unknown checkpoint layout (keys: {sorted(obj)[:5]})")


def _nanogpt(path: Path, obj: dict[str, Any]) -> Loaded:
    args = obj["model_args"]
    if not isinstance(args, dict) or not isinstance(obj["model"], dict):
        raise PicoError(f"{path}: a nanoGPT checkpoint whose model_args or model is not a dict")
    n_head = args.get("n_head")
    if n_head is not None and (not isinstance(n_head, int) or isinstance(n_head, bool) or n_head < 1):
        raise PicoError(f"{path}: a nanoGPT checkpoint with n_head {n_head!r}: it must be a whole number >= 1")
    model = _model_from_state_dict(obj["model"], n_head, path)
    if model.config.vocab_size != CharTokenizer().vocab_size:
        raise PicoError(f"{path}: a nanoGPT checkpoint with a vocabulary of {model.config.vocab_size}; PicoGPT's "
                        f"tokenizer has {CharTokenizer().vocab_size} characters, so its ids would mean other "
                        "characters (train with picogpt-train, or nanoGPT on PicoGPT's vocabulary)")
    best = obj.get("best_val_loss")
    return Loaded(model, CharTokenizer(), "nanogpt", obj.get("iter_num"), None if best is None else float(best))


def config_from_state_dict(sd: dict[str, torch.Tensor], n_head: int | None = None) -> GPTConfig:
    """Infer the shape from tensor sizes (n_head cannot be seen in them: taken from args or the default)."""
    for key in ("transformer.wte.weight", "transformer.wpe.weight"):
        if key not in sd:
            raise PicoError(f"checkpoint of another architecture: no {key} tensor")
        if not isinstance(sd[key], torch.Tensor) or sd[key].dim() != 2:
            raise PicoError(f"checkpoint of another architecture: {key} is not a 2-D tensor")
    vocab, n_embd = sd["transformer.wte.weight"].shape
    n_positions = sd["transformer.wpe.weight"].shape[0]
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    return GPTConfig(context_len=n_positions - 1, vocab_size=vocab, n_layer=len(layers),
                     n_head=n_head or GPTConfig.n_head, n_embd=n_embd,
                     bias="transformer.h.0.attn.c_attn.bias" in sd)


def _model_from_state_dict(sd: dict[str, torch.Tensor], n_head: int | None, path: Path) -> GPT:
    sd = {str(k).removeprefix("_orig_mod."): v for k, v in sd.items() if not str(k).endswith(".attn.bias")}
    check_weights(path, sd)
    wte = sd.get("transformer.wte.weight")
    head = sd.setdefault("lm_head.weight", wte)
    if isinstance(head, torch.Tensor) and isinstance(wte, torch.Tensor) and wte.dim() == 2 and not (
            head.shape == wte.shape and torch.equal(head, wte)):
        raise PicoError("checkpoint of another architecture: its lm_head is not tied to wte (PicoGPT's model "
                        "shares one matrix for both)")
    model = GPT(config_from_state_dict(sd, n_head))
    expected, got = set(model.state_dict()), set(sd)
    if expected != got:
        diff = sorted((expected - got) | (got - expected))[:3]
        raise PicoError(f"checkpoint of another architecture: tensors {diff} do not match PicoGPT's")
    return _load_weights(model, sd, f"{path}: a checkpoint of another architecture").eval()


def _load_weights(model: GPT, sd: dict[str, torch.Tensor], what: str) -> GPT:
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise PicoError(f"{what}: {str(exc).splitlines()[-1].strip()[:160]}") from None
    return model
