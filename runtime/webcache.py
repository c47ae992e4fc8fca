"""The cache of a page's own model file (the web variant, runtime/webgraph.py), run natively.

The page feeds `past_*` and receives only the rows a step wrote (`new_rows`), which it copies into its
own buffers; this class does the same with numpy, so `picogpt-run -m SITE/model.onnx` runs the very
graph the browser runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from picogpt.config import GPTConfig
from picogpt.contract import fused_cache_names
from picogpt.runtime.webgraph import NEW_ROWS, ROW_END, ROW_START

WEB_INPUTS = (ROW_START, ROW_END)


class WebCache:
    """Per layer a [B, H, n_positions, D] key and value buffer, fed whole; a step's new rows written back."""

    def __init__(self, session: Any, config: GPTConfig, batch: int) -> None:
        shape = (batch, config.n_head, config.n_positions, config.head_size)
        self.session, self.batch, self.n_layer = session, batch, config.n_layer
        self.buffers = [np.zeros(shape, dtype=np.float32) for _ in range(2 * config.n_layer)]
        self.names = [n for i in range(config.n_layer) for n in fused_cache_names(i)[:2]]

    def rewind(self, pos: int) -> None:
        """Nothing to do: rows at or after the total length are never read, only overwritten."""

    def run(self, ids: np.ndarray, context: np.ndarray, pos: int) -> tuple[np.ndarray, np.ndarray]:
        b, new = ids.shape
        if new > 1 and pos > 0 and b > 1:  # as FusedCache: GroupQueryAttention takes one row at a time here
            hsum = np.zeros((b, context.shape[1]), np.float32)
            for j in range(new):
                logits, part = self.run(ids[:, j : j + 1], context, pos + j)
                hsum += part
            return logits, hsum
        feeds = {"input_ids": ids, "context": context, "position_ids": np.tile(np.arange(pos, pos + new), (b, 1)),
                 "seqlens_k": np.full(b, pos + new - 1, np.int32), "total_sequence_length": np.array(pos + new,
                                                                                                    np.int32),
                 ROW_START: np.array([pos], np.int64), ROW_END: np.array([pos + new], np.int64)}
        feeds.update(zip(self.names, self.buffers))
        logits, hsum, rows = self.session.run(["logits", "hidden_sum", NEW_ROWS], feeds)
        rows = rows.reshape(2 * self.n_layer, b, *rows.shape[1:])  # Concat on axis 0 stacks layer-major
        for buf, part in zip(self.buffers, rows):
            buf[:, :, pos : pos + new] = part
        return logits, hsum
