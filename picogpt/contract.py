"""The PicoGPT ONNX file contract (torch-free): input/output names and shapes, the slot id, and the
`picogpt.*` metadata. `picogpt.export` writes files by it; `picogpt.runtime.decoder` reads them.

One graph does prefill and decode, in one of two layouts (details in docs/onnx.md):
  inputs   input_ids  int64 [batch, new]       new ids; a row may start with the slot id
           context    float [batch, n_embd]     this window's context vector
           + the cache: portable  past_key/past_value [n_layer, batch, n_head, past, head_size]
                        fused     position_ids, seqlens_k, total_sequence_length and per layer
                                  past_key_i/past_value_i [batch, n_head, n_positions, head_size]
  outputs  logits     float [batch, vocab]     for the id after the last new one
           hidden_sum float [batch, n_embd]     sum of the new rows' ln_f outputs
           + the updated cache (present_*)
The graph replaces the embedding of the slot id by `context`, so no `If` node and no size-0/1
special case is needed; the caller starts a window by feeding `[slot, c_1, ...]` at position 0,
and when a window is full sets `context = running hidden_sum / (context_len + 1)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.tokenizer import CharTokenizer
from picogpt.windows import resolve_overlap

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 files are the portable layout without a `layout` key
META_PREFIX = "picogpt."
LAYOUTS = ("fused", "portable")
INPUTS = ("input_ids", "context", "past_key", "past_value")
OUTPUTS = ("logits", "present_key", "present_value", "hidden_sum")
FINGERPRINT_PROMPT = "ROMEO:\n"
FINGERPRINT_CHARS = 64


def fused_cache_names(layer: int) -> tuple[str, str, str, str]:
    """past_key, past_value, present_key, present_value of one layer in the fused layout."""
    return f"past_key_{layer}", f"past_value_{layer}", f"present_key_{layer}", f"present_value_{layer}"


def fused_io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """Input and output names of the fused layout, in graph order."""
    inputs = ["input_ids", "context", "position_ids", "seqlens_k", "total_sequence_length"]
    outputs = ["logits", "hidden_sum"]
    for i in range(n_layer):
        pk, pv, nk, nv = fused_cache_names(i)
        inputs += [pk, pv]
        outputs += [nk, nv]
    return inputs, outputs


def io_names(layout: str, n_layer: int) -> tuple[list[str], list[str]]:
    """Input and output names of a layout."""
    return fused_io_names(n_layer) if layout == "fused" else (list(INPUTS), list(OUTPUTS))


def fused_unsupported(config: GPTConfig) -> str | None:
    """Why the fused layout cannot run `config`, or None. onnxruntime's GroupQueryAttention (CPU) needs a head
    size that is a multiple of 8; the portable layout runs any config."""
    if config.head_size % 8:
        return (f"the fused graph needs a head size (n_embd / n_head) that is a multiple of 8 for onnxruntime's "
                f"GroupQueryAttention; this model's is {config.n_embd} / {config.n_head} = {config.head_size}")
    return None


def slot_id(config: GPTConfig) -> int:
    """The id that marks the slot: one past the vocabulary, so no real token (not even a reserved
    one the sampler might draw) can be mistaken for it."""
    return config.vocab_size


def read_contract(path: Path, meta: dict[str, str], session: Any) -> tuple[GPTConfig, CharTokenizer, int]:
    """Config, tokenizer and slot id from the metadata, checked against each other and the graph's own shapes,
    so a damaged or hand-edited file is refused at load, before any text is printed."""
    try:
        config = GPTConfig.from_json(meta["config"])
        tokenizer = CharTokenizer.from_json(meta["tokenizer"])
        slot = json.loads(meta["protocol"])["slot_id"]
    except KeyError as exc:
        raise PicoError(f"{path}: the picogpt metadata lacks {exc}") from None
    except (ValueError, TypeError) as exc:  # PicoError is neither: the config/tokenizer messages pass through
        raise PicoError(f"{path}: the picogpt metadata is not valid ({exc})") from None
    except PicoError as exc:
        raise PicoError(f"{path}: the picogpt metadata is not valid ({exc})") from None
    if not isinstance(slot, int) or slot != config.vocab_size:
        raise PicoError(f"{path}: metadata slot_id {slot!r} is not the vocabulary size {config.vocab_size}")
    if tokenizer.vocab_size != config.vocab_size:
        raise PicoError(f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the config says "
                        f"{config.vocab_size}")
    graph = {t.name: t.shape for t in [*session.get_inputs(), *session.get_outputs()]}
    for name, dim, want in (("context", 1, config.n_embd), ("logits", 1, config.vocab_size)):
        got = graph.get(name, [None, None])[dim]
        if isinstance(got, int) and got != want:
            raise PicoError(f"{path}: the graph's {name} has size {got} where the metadata's config says {want}")
    return config, tokenizer, slot


def read_fingerprint(path: Path, meta: dict[str, str]) -> tuple[str, str]:
    """(prompt, greedy text) of the file's parity fingerprint, or one line saying why it cannot be read."""
    try:
        fp = json.loads(meta.get("fingerprint", "{}"))
    except ValueError as exc:
        raise PicoError(f"{path}: its fingerprint metadata is not valid JSON ({exc}): export the file again") from None
    if not isinstance(fp, dict) or not all(isinstance(fp.get(k, ""), str) for k in ("prompt", "greedy")):
        raise PicoError(f"{path}: its fingerprint metadata is not a {{prompt, greedy}} pair of strings: export the "
                        "file again")
    return fp.get("prompt", ""), fp.get("greedy", "")


def io_shapes(layout: str, config: GPTConfig) -> dict[str, list[int | str]]:
    """Symbolic shape of every input and output of a layout."""
    c = config
    shapes: dict[str, list[int | str]] = {
        "input_ids": ["batch", "new"], "context": ["batch", c.n_embd],
        "logits": ["batch", c.vocab_size], "hidden_sum": ["batch", c.n_embd],
    }
    if layout == "fused":
        shapes.update({"position_ids": ["batch", "new"], "seqlens_k": ["batch"], "total_sequence_length": []})
        for i in range(c.n_layer):
            for name in fused_cache_names(i):
                shapes[name] = ["batch", c.n_head, c.n_positions, c.head_size]
    else:
        for name, length in (("past", "past"), ("present", "past+new")):
            shapes[f"{name}_key"] = shapes[f"{name}_value"] = [c.n_layer, "batch", c.n_head, length, c.head_size]
    return shapes


# Inputs that are not float32; every other input and output is.
DTYPES = {"input_ids": "int64", "position_ids": "int64", "seqlens_k": "int32", "total_sequence_length": "int32"}


def io_spec(layout: str, config: GPTConfig) -> tuple[list[tuple[str, str, list[int | str]]], ...]:
    """(inputs, outputs) of a layout in graph order, each as (name, numpy dtype, symbolic shape)."""
    shapes = io_shapes(layout, config)
    return tuple([(name, DTYPES.get(name, "float32"), shapes[name]) for name in names]
                 for names in io_names(layout, config.n_layer))


def metadata_dict(
    config: GPTConfig,
    tokenizer: CharTokenizer,
    quantization: str,
    step: int | None,
    val_loss: float | None,
    fingerprint: str | None,
    layout: str = "fused",
    overlap: int | None = None,
) -> dict[str, str]:
    """The `picogpt.*` metadata_props of an exported file (all values are strings)."""
    inputs, outputs = io_names(layout, config.n_layer)
    protocol = {
        "slot_id": slot_id(config), "context_len": config.context_len, "n_positions": config.n_positions,
        "rule": "new window: feed [slot_id, ids...] at position 0 and context = previous window's "
                "hidden_sum / n_positions (zeros for the first window); positions number on from the rows "
                "already in the window; a window that follows a full one feeds [slot_id, the stream's last "
                "`overlap` ids, new ids...]",
        "cache": "fixed buffers of n_positions rows, bound as past and present alike (written in place); "
                 "seqlens_k = pos + new - 1, total_sequence_length = pos + new" if layout == "fused" else
                 "present = past with the new rows appended; an empty cache starts a window",
    }
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "layout": layout, "config": config.to_json(),
        "tokenizer": tokenizer.to_json(),
        "io": json.dumps({"inputs": inputs, "outputs": outputs, "shapes": io_shapes(layout, config)}),
        "protocol": json.dumps(protocol), "quantization": quantization,
        "step": "" if step is None else step, "val_loss": "" if val_loss is None else f"{val_loss:.6f}",
        "fingerprint": json.dumps({"prompt": FINGERPRINT_PROMPT, "greedy": fingerprint or ""}),
        "overlap": resolve_overlap(overlap, config.context_len),
    }
    return {META_PREFIX + k: str(v) for k, v in meta.items()}
