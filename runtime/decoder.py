"""The runtime's engine: feed tokens through a PicoGPT .onnx file with onnxruntime and numpy (torch-free).

`OnnxDecoder` implements the window protocol of `picogpt.contract` over one of two caches: the portable
layout's (passed through `session.run`) or the fused layout's (fixed buffers bound in place). It is the
decoder the runtime generates with and the export verifies with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from picogpt.config import GPTConfig
from picogpt.contract import LAYOUTS, META_PREFIX, READABLE_VERSIONS, fused_cache_names, io_names, read_contract
from picogpt.errors import PicoError
from picogpt.runtime.webcache import WEB_INPUTS, WebCache
from picogpt.windows import check_overlap, chunk_ids, keep_recent, plan_chunks


def session_options(threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


def model_source(path: Path) -> str | bytes:
    """What onnxruntime loads: the path, or, on a CPU without VNNI, an int8 file's bytes with u8 weight codes."""
    from picogpt.system import has_vnni

    if has_vnni() or path.stat().st_size > 2**30:
        return str(path)
    from picogpt.runtime.int8load import has_s8_linears, u8_weights

    data = path.read_bytes()
    try:
        return u8_weights(data) if has_s8_linears(data) else str(path)
    except PicoError:  # not a readable model: onnxruntime says what is wrong with it
        return str(path)


@dataclass
class StreamState:
    """A batch of streams: this window's context vector, running ln_f sum, filled positions, cache, and the
    stream's last ids (what the next window re-reads)."""

    context: np.ndarray
    hidden_sum: np.ndarray
    pos: int
    cache: PortableCache | FusedCache
    recent: np.ndarray


_cat = partial(np.concatenate, axis=1)


class PortableCache:
    """The portable layout's cache, [n_layer, B, H, past, D], passed through `session.run`.

    Simple and runs anywhere, but every step copies the whole cache in and out.
    """

    def __init__(self, session: Any, config: GPTConfig, batch: int) -> None:
        self.session = session
        self.key = np.zeros((config.n_layer, batch, config.n_head, 0, config.head_size), dtype=np.float32)
        self.value = self.key.copy()

    def rewind(self, pos: int) -> None:
        """Forget every row from `pos` on (0: a new window)."""
        self.key, self.value = self.key[:, :, :, :pos], self.value[:, :, :, :pos]

    def run(self, ids: np.ndarray, context: np.ndarray, pos: int) -> tuple[np.ndarray, np.ndarray]:
        logits, self.key, self.value, hsum = self.session.run(
            None, {"input_ids": ids, "context": context, "past_key": self.key, "past_value": self.value})
        return logits, hsum


class FusedCache:
    """The fused layout's cache: per layer, a fixed [B, H, n_positions, D] buffer.

    Each buffer is bound (IOBinding, by pointer) as both `past_key_i` and `present_key_i`, so
    GroupQueryAttention writes the new rows in place: no per-step copy or allocation. The small
    inputs and the outputs are preallocated and bound once too; a step only fills them.
    """

    def __init__(self, session: Any, config: GPTConfig, batch: int) -> None:
        shape = (batch, config.n_head, config.n_positions, config.head_size)
        self.session, self.batch = session, batch
        self.binding = session.io_binding()
        self.buffers = [np.zeros(shape, dtype=np.float32) for _ in range(2 * config.n_layer)]
        for i in range(config.n_layer):
            past_k, past_v, present_k, present_v = fused_cache_names(i)
            for name, buf in ((past_k, self.buffers[2 * i]), (past_v, self.buffers[2 * i + 1])):
                self._bind(name, buf, output=False)
            for name, buf in ((present_k, self.buffers[2 * i]), (present_v, self.buffers[2 * i + 1])):
                self._bind(name, buf, output=True)
        self.context = self._bind("context", np.zeros((batch, config.n_embd), np.float32), output=False)
        self.seqlens_k = self._bind("seqlens_k", np.zeros(batch, np.int32), output=False)
        self.total = self._bind("total_sequence_length", np.zeros((), np.int32), output=False)
        self.logits = self._bind("logits", np.zeros((batch, config.vocab_size), np.float32), output=True)
        self.hidden_sum = self._bind("hidden_sum", np.zeros((batch, config.n_embd), np.float32), output=True)
        self.ids = self.positions = np.zeros((batch, 0), np.int64)

    def _bind(self, name: str, array: np.ndarray, output: bool) -> np.ndarray:
        # The binding holds a raw pointer: `self` keeps every bound array alive.
        bind = self.binding.bind_output if output else self.binding.bind_input
        bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        return array

    def rewind(self, pos: int) -> None:
        """Nothing to do: rows at or after the total length are never read, only overwritten."""

    def run(self, ids: np.ndarray, context: np.ndarray, pos: int) -> tuple[np.ndarray, np.ndarray]:
        new = ids.shape[1]
        if new > 1 and pos > 0 and self.batch > 1:
            # GroupQueryAttention (CPU) refuses several new rows onto a cache when batch > 1:
            # feed them one at a time (only a mid-window multi-token feed of a batch gets here).
            hsum = np.zeros_like(self.hidden_sum)
            for j in range(new):
                logits, part = self.run(ids[:, j : j + 1], context, pos + j)
                hsum += part
            return logits, hsum
        if self.ids.shape[1] != new:  # rebind only when the chunk length changes (prefill vs decode)
            self.ids = self._bind("input_ids", np.zeros((self.batch, new), np.int64), output=False)
            self.positions = self._bind("position_ids", np.zeros((self.batch, new), np.int64), output=False)
        self.ids[...] = ids
        self.positions[...] = np.arange(pos, pos + new)
        self.context[...] = context
        self.seqlens_k[...] = pos + new - 1
        self.total[...] = pos + new
        self.session.run_with_iobinding(self.binding)
        # logits are kept by callers, so they get a copy; the sum is added at once (the next run overwrites it)
        return self.logits.copy(), self.hidden_sum


def file_overlap(path: Path, metadata: dict[str, str], context_len: int) -> int:
    """The file's `picogpt.overlap` (0 for files written before it existed), checked like the flag."""
    text = metadata.get("overlap")
    if text is None:
        return 0
    try:
        return check_overlap(int(text), context_len, "metadata picogpt.overlap")
    except (ValueError, PicoError) as exc:
        raise PicoError(f"{path}: {exc}" if isinstance(exc, PicoError) else
                        f"{path}: metadata picogpt.overlap is not a whole number ({text!r})") from None


class OnnxDecoder:
    """Load a PicoGPT .onnx file and feed tokens through it, window protocol included."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, overlap: int | None = None) -> None:
        """`overlap`: characters a new window re-reads (default: the file's `picogpt.overlap`, else 0)."""
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise PicoError(f"model file not found: {path}")
        try:
            self.session = ort.InferenceSession(model_source(path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise PicoError(f"{path} is not a valid ONNX model ({str(exc).splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        if "format_version" not in self.metadata:
            raise PicoError(f"{path} is an ONNX model but not a PicoGPT one (no picogpt.* metadata)")
        if self.metadata["format_version"] not in {str(v) for v in READABLE_VERSIONS}:
            raise PicoError(f"{path} has PicoGPT format version {self.metadata['format_version']}; "
                            f"this picogpt reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        self.config, self.tokenizer, self.slot_id = read_contract(path, self.metadata, self.session)
        self.layout = self.metadata.get("layout", "portable")
        if self.layout not in LAYOUTS:
            raise PicoError(f"{path}: unknown graph layout {self.layout!r} (this picogpt reads {', '.join(LAYOUTS)})")
        expected = io_names(self.layout, self.config.n_layer)[0]
        names = [i.name for i in self.session.get_inputs()]
        self.web = self.layout == "fused" and names == expected + list(WEB_INPUTS)  # a page's own file
        if names != expected and not self.web:
            raise PicoError(f"{path}: unexpected inputs {names[:6]}, the {self.layout} layout says {expected[:6]}")
        self.path = path
        self.overlap = file_overlap(path, self.metadata, self.config.context_len) if overlap is None else \
            check_overlap(overlap, self.config.context_len)

    def new_state(self, batch: int = 1) -> StreamState:
        c = self.config
        zeros = np.zeros((batch, c.n_embd), dtype=np.float32)
        cache_type = WebCache if self.web else FusedCache if self.layout == "fused" else PortableCache
        return StreamState(zeros, zeros.copy(), 0, cache_type(self.session, c, batch),
                           np.zeros((batch, 0), dtype=np.int64))

    def feed(self, ids: np.ndarray, state: StreamState) -> np.ndarray:
        """Feed ids [B, T] (T >= 1) after `state` (updated in place); return logits [B, V]."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape[1] == 1 and 0 < state.pos < self.config.n_positions:
            # one id inside a window, most of decoding: the single chunk plan_chunks gives, without planning
            logits, hsum = state.cache.run(ids, state.context, state.pos)
            state.hidden_sum, state.pos = state.hidden_sum + hsum, state.pos + 1
            state.recent = keep_recent(state.recent, ids, self.overlap, _cat)
            return logits
        logits = None
        for chunk in plan_chunks(state.pos, ids.shape[1], self.config.context_len, self.overlap):
            if chunk.roll_over:
                state.context = state.hidden_sum / np.float32(state.pos)
                state.hidden_sum = np.zeros_like(state.context)
                state.cache.rewind(0)
            part = chunk_ids(chunk, ids, state.recent, _cat)
            if chunk.with_slot:
                part = np.concatenate([np.full((ids.shape[0], 1), self.slot_id, dtype=np.int64), part], axis=1)
            logits, hsum = state.cache.run(part, state.context, chunk.pos)
            state.hidden_sum = state.hidden_sum + hsum
            state.pos = chunk.pos + part.shape[1]
        if logits is None:
            raise PicoError("nothing to feed: at least one token is needed")
        state.recent = keep_recent(state.recent, ids, self.overlap, _cat)
        return logits

    def rewind(self, state: StreamState, pos: int) -> None:
        """Step back to `pos` filled positions of the current window (for timing a fixed position).

        The running ln_f sum is not rewound: use it only where the next window does not matter.
        """
        if not 0 < pos <= state.pos:
            raise PicoError(f"cannot rewind to position {pos} of a window filled to {state.pos}")
        state.cache.rewind(pos)
        state.pos = pos
