"""Load the checkpoints `picogpt-export` accepts: picogpt-train's, nanoGPT's `ckpt.pt`, and the
original PicoGPT `log.pkl` (`{"best_weight": state_dict, ...}`), all with `weights_only=True`
so no arbitrary pickle code runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from picogpt.checkpoint import CKPT_FORMAT, model_from_checkpoint
from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.model import GPT
from picogpt.tokenizer import CharTokenizer


@dataclass
class Loaded:
    model: GPT
    tokenizer: CharTokenizer
    source: str  # "picogpt", "nanogpt" or "picogpt-seed"
    step: int | None
    val_loss: float | None


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
    config = config_from_state_dict(sd, n_head)
    model = GPT(config)
    expected, got = set(model.state_dict()), set(sd)
    if expected != got:
        diff = sorted((expected - got) | (got - expected))[:3]
        raise PicoError(f"checkpoint of another architecture: tensors {diff} do not match PicoGPT's")
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise PicoError(f"checkpoint of another architecture: {str(exc).splitlines()[-1].strip()[:160]}") from None
    return model.eval()


def load_any_checkpoint(path: str | Path) -> Loaded:
    """Load a checkpoint of any of the three layouts, or fail with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise PicoError(f"checkpoint not found: {path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PicoError(f"{path} is corrupt, truncated or not a torch checkpoint ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise PicoError(f"{path} does not hold a checkpoint dict")
    if obj.get("format") == CKPT_FORMAT:
        model, tok = model_from_checkpoint(obj)
        return Loaded(model, tok, "picogpt", obj.get("step"), obj.get("val_loss"))
    if "model" in obj and "model_args" in obj:  # nanoGPT's train.py
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
    if "best_weight" in obj:  # the original PicoGPT's log.pkl
        return Loaded(_model_from_state_dict(obj["best_weight"], None), CharTokenizer(), "picogpt-seed", None, None)
    raise PicoError(f"{path}: unknown checkpoint layout (keys: {sorted(obj)[:5]})")
