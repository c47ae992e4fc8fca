"""The decode-step module that is exported: one graph for prefill and decode (see picogpt.contract)."""

from __future__ import annotations

import os
import time
import warnings

import torch
import torch.nn as nn

from picogpt.contract import io_spec, slot_id
from picogpt.model import GPT


class DecodeStep(nn.Module):
    """The model's cached decode as a pure function of (ids, context, past) -> (logits, present, sum).

    Reuses the model's own blocks, so torch and ONNX cannot drift apart: the slot's embedding
    is swapped in with `where` (no `If`), positions and the bottom-right causal mask come from
    the past length.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model
        self.slot_id = slot_id(model.config)

    def forward(self, input_ids: torch.Tensor, context: torch.Tensor, past_key: torch.Tensor,
                past_value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tr = self.model.transformer
        is_slot = (input_ids == self.slot_id).unsqueeze(-1)
        emb = tr.wte(torch.clamp(input_ids, max=self.slot_id - 1))  # the slot id is out of the table
        x = torch.where(is_slot, context.unsqueeze(1), emb)
        past_len = past_key.shape[3]
        x = x + tr.wpe(torch.arange(x.shape[1], device=x.device) + past_len)
        keys, values = [], []
        for i, block in enumerate(tr.h):
            x, (k, v) = block(x, (past_key[i], past_value[i]))
            keys.append(k)
            values.append(v)
        hidden = tr.ln_f(x)
        logits = self.model.lm_head(hidden[:, -1])
        return logits, torch.stack(keys), torch.stack(values), hidden.sum(dim=1)


def example_inputs(model: GPT, batch: int = 2, new: int = 3, past: int = 2) -> tuple[torch.Tensor, ...]:
    """Example sizes >= 2 on every dynamic axis: the exporter freezes axes traced at 0 or 1."""
    c = model.config
    ids = torch.randint(0, c.vocab_size - 1, (batch, new))
    kv = torch.randn(c.n_layer, batch, c.n_head, past, c.head_size)
    return ids, torch.randn(batch, c.n_embd), kv, kv.clone()


def export_onnx(model: GPT, path: str | os.PathLike, opset: int = 18) -> float:
    """Export the decode step to `path` with the dynamo exporter; returns seconds taken."""
    import logging

    from torch.export import Dim

    # the exporter lists every torchvision op it cannot register: noise for a text model
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    t0 = time.perf_counter()
    step = DecodeStep(model.eval()).eval()
    batch, new, past = Dim("batch", min=1, max=4096), Dim("new", min=1, max=model.config.n_positions), \
        Dim("past", min=0, max=model.config.context_len)
    dims = {"batch": batch, "new": new, "past": past}
    inputs, outputs = io_spec("portable", model.config)
    # The contract's symbolic axes of each input become the exporter's dynamic dims.
    dynamic_shapes = {name: {k: dims[d] for k, d in enumerate(shape) if isinstance(d, str)}
                      for name, _, shape in inputs}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            step, example_inputs(model), dynamo=True, opset_version=opset, input_names=[n for n, _, _ in inputs],
            output_names=[n for n, _, _ in outputs], dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
        )
    program.save(str(path))
    return time.perf_counter() - t0


def export_layout(model: GPT, path: str | os.PathLike, layout: str = "fused", opset: int = 18) -> float:
    """Write the fp32 graph of `layout` ("fused" or "portable") to `path`, checked; returns seconds."""
    import onnx

    if layout == "fused":
        from picogpt.export.fused import export_fused

        seconds = export_fused(model, path, opset)
    else:
        seconds = export_onnx(model, path, opset)
    onnx.checker.check_model(str(path))
    return seconds
