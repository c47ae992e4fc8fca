"""The PicoGPT ONNX contract and a numpy/onnxruntime stepper for it (torch-free).

`picogpt.export` writes files that follow this contract; `picogpt.runtime` and the export's
own verification read them through `OnnxDecoder`, so both speak one protocol.

One graph does prefill and decode (see docs/onnx.md):
  inputs   input_ids  int64 [batch, new]       new ids; a row may start with SLOT_ID
           context    float [batch, n_embd]     this window's context vector
           past_key   float [n_layer, batch, n_head, past, head_size]   (past_value alike)
  outputs  logits     float [batch, vocab]     for the id after the last new one
           present_key / present_value          the cache with the new rows appended
           hidden_sum float [batch, n_embd]     sum of the new rows' ln_f outputs
The graph replaces the embedding of SLOT_ID by `context` and numbers positions from `past`, so
no `If` node and no size-0/1 special case is needed; the caller starts a window by feeding
`[SLOT_ID, c_1, ...]` with an empty cache, and when a window is full sets
`context = running hidden_sum / (context_len + 1)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.tokenizer import CharTokenizer
from picogpt.windows import plan_chunks

FORMAT_VERSION = 1
META_PREFIX = "picogpt."
INPUTS = ("input_ids", "context", "past_key", "past_value")
OUTPUTS = ("logits", "present_key", "present_value", "hidden_sum")
FINGERPRINT_PROMPT = "ROMEO:\n"
FINGERPRINT_CHARS = 64


def slot_id(config: GPTConfig) -> int:
    """The id that marks the slot: one past the vocabulary, so no real token (not even a reserved
    one the sampler might draw) can be mistaken for it."""
    return config.vocab_size


def session_options(threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


@dataclass
class StreamState:
    """A batch of streams: this window's context vector, running ln_f sum, filled positions, cache."""

    context: np.ndarray
    hidden_sum: np.ndarray
    pos: int
    past_key: np.ndarray
    past_value: np.ndarray


class OnnxDecoder:
    """Load a PicoGPT .onnx file and feed tokens through it, window protocol included."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PicoError(f"model file not found: {path}")
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise PicoError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        if "format_version" not in self.metadata:
            raise PicoError(f"{path} is an ONNX model but not a PicoGPT one (no picogpt.* metadata)")
        if self.metadata["format_version"] != str(FORMAT_VERSION):
            raise PicoError(f"{path} has PicoGPT format version {self.metadata['format_version']}; "
                            f"this picogpt reads version {FORMAT_VERSION}")
        self.config = GPTConfig.from_json(self.metadata["config"])
        self.tokenizer = CharTokenizer.from_json(self.metadata["tokenizer"])
        self.slot_id = json.loads(self.metadata["protocol"])["slot_id"]
        names = [i.name for i in self.session.get_inputs()]
        if tuple(names) != INPUTS:
            raise PicoError(f"{path}: unexpected inputs {names}, the contract says {list(INPUTS)}")
        self.path = path

    def new_state(self, batch: int = 1) -> StreamState:
        c = self.config
        empty = np.zeros((c.n_layer, batch, c.n_head, 0, c.head_size), dtype=np.float32)
        zeros = np.zeros((batch, c.n_embd), dtype=np.float32)
        return StreamState(zeros, zeros.copy(), 0, empty, empty.copy())

    def feed(self, ids: np.ndarray, state: StreamState) -> np.ndarray:
        """Feed ids [B, T] (T >= 1) after `state` (updated in place); return logits [B, V]."""
        ids = np.asarray(ids, dtype=np.int64)
        logits = None
        for chunk in plan_chunks(state.pos, ids.shape[1], self.config.context_len):
            if chunk.roll_over:
                state.context = state.hidden_sum / np.float32(state.pos)
                state.hidden_sum = np.zeros_like(state.context)
                state.past_key = state.past_key[:, :, :, :0]
                state.past_value = state.past_value[:, :, :, :0]
            part = ids[:, chunk.start : chunk.start + chunk.take]
            if chunk.with_slot:
                part = np.concatenate([np.full((ids.shape[0], 1), self.slot_id, dtype=np.int64), part], axis=1)
            logits, state.past_key, state.past_value, hsum = self.session.run(
                None, {"input_ids": part, "context": state.context,
                       "past_key": state.past_key, "past_value": state.past_value})
            state.hidden_sum = state.hidden_sum + hsum
            state.pos = chunk.pos + part.shape[1]
        if logits is None:
            raise PicoError("nothing to feed: at least one token is needed")
        return logits

    def greedy_ids(self, prompt_ids: list[int], n: int) -> list[int]:
        """Greedy continuation (one stream) of `prompt_ids`: n new ids."""
        state = self.new_state(1)
        logits = self.feed(np.array([prompt_ids]), state)
        out: list[int] = []
        for _ in range(n):
            out.append(int(logits[0].argmax()))
            if len(out) < n:
                logits = self.feed(np.array([[out[-1]]]), state)
        return out

    def greedy(self, prompt: str, n: int) -> str:
        """Greedy continuation of `prompt`: the parity fingerprint's procedure."""
        return self.tokenizer.decode(self.greedy_ids(self.tokenizer.encode(prompt), n))


def metadata_dict(
    config: GPTConfig,
    tokenizer: CharTokenizer,
    quantization: str,
    step: int | None,
    val_loss: float | None,
    fingerprint: str | None,
) -> dict[str, str]:
    """The `picogpt.*` metadata_props of an exported file (all values are strings)."""
    shapes = {
        "input_ids": ["batch", "new"], "context": ["batch", config.n_embd],
        "past_key": [config.n_layer, "batch", config.n_head, "past", config.head_size],
        "past_value": [config.n_layer, "batch", config.n_head, "past", config.head_size],
        "logits": ["batch", config.vocab_size], "hidden_sum": ["batch", config.n_embd],
        "present_key": [config.n_layer, "batch", config.n_head, "past+new", config.head_size],
        "present_value": [config.n_layer, "batch", config.n_head, "past+new", config.head_size],
    }
    protocol = {
        "slot_id": slot_id(config), "context_len": config.context_len, "n_positions": config.n_positions,
        "rule": "new window: feed [slot_id, ids...] with an empty cache and context = previous window's "
                "hidden_sum / n_positions (zeros for the first window); positions number from past length",
    }
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION, "config": config.to_json(), "tokenizer": tokenizer.to_json(),
        "io": json.dumps({"inputs": list(INPUTS), "outputs": list(OUTPUTS), "shapes": shapes}),
        "protocol": json.dumps(protocol), "quantization": quantization,
        "step": "" if step is None else step, "val_loss": "" if val_loss is None else f"{val_loss:.6f}",
        "fingerprint": json.dumps({"prompt": FINGERPRINT_PROMPT, "greedy": fingerprint or ""}),
    }
    return {META_PREFIX + k: str(v) for k, v in meta.items()}
