"""The fused decode graph: the same weights, wired straight onto onnxruntime's contrib kernels.

The dynamo export (`graph.py`) is portable: standard ONNX ops only, ~330 nodes, and it copies
the KV cache in and out every step. This builder writes the same function in ~120 nodes:
per layer the packed QKV linear, GroupQueryAttention (which appends the new rows to a
fixed-capacity cache *in place* when past and present share one buffer), the output linear,
the residual Add and LayerNormalization, the FC linear, BiasGelu, the projection linear, the
residual Add and the next LayerNormalization. Positions, `seqlens_k` and the total length are
inputs, so the graph has no Shape/Gather chains. See docs/onnx.md ("fused layout").

The linears are plain MatMul nodes here; onnxruntime's quantizers then turn them into
DynamicQuantizeMatMul (int8) or MatMulNBits (int4/int8 blocks) exactly as for the portable graph.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from picogpt.config import LN_EPS
from picogpt.contract import fused_cache_names, io_spec, slot_id
from picogpt.model import GPT

MS_DOMAIN = "com.microsoft"


class FusedBuilder:
    """Builds the fused graph of one model: the embedding, one layer at a time, the head, the I/O. Nodes and
    initializers are collected with readable, unique names."""

    def __init__(self, model: GPT) -> None:
        self.c = model.config
        self.sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs


    def bias(self, name: str, size: int) -> np.ndarray:
        return self.sd[name] if name in self.sd else np.zeros(size, np.float32)

    def linear(self, x: str, prefix: str, out: str, with_bias: bool) -> str:
        """x @ W^T (+ b when `with_bias`; otherwise the caller folds the bias downstream)."""
        weight = self.sd[f"{prefix}.weight"]
        y = self.node("MatMul", [x, self.const(f"{prefix}.weight_t", weight.T)],
                      [out if not with_bias else out + "_mm"], f"{prefix}/MatMul")[0]
        if with_bias:
            b = self.const(f"{prefix}.bias", self.bias(f"{prefix}.bias", weight.shape[0]))
            y = self.node("Add", [y, b], [out], f"{prefix}/Add")[0]
        return y

    def skip_ln(self, x: str, skip: str, ln: str, tag: str) -> tuple[str, str]:
        """LayerNorm(x + skip) and the sum (the new residual stream).

        Add + LayerNormalization rather than onnxruntime's SkipLayerNormalization, whose CPU kernel is several
        times slower on more than one row (prefill, a roll-over, a batch) and no faster on one."""
        gamma = self.const(f"{ln}.weight", self.sd[f"{ln}.weight"])
        beta = self.const(f"{ln}.bias", self.bias(f"{ln}.bias", self.c.n_embd))
        total = self.node("Add", [x, skip], [f"{tag}_sum"], f"{tag}/AddSkip")[0]
        out = self.node("LayerNormalization", [total, gamma, beta], [f"{tag}_ln"], f"{tag}/LayerNorm", axis=-1,
                        epsilon=LN_EPS)[0]
        return out, total

    def embed(self) -> tuple[str, str]:
        """Token + position embeddings, then layer 0's ln_1: (normed, residual stream).

        The slot id indexes an extra zero row, then `Where` swaps in the context vector."""
        wte = self.sd["transformer.wte.weight"]
        table = self.const("wte_with_slot_row", np.concatenate([wte, np.zeros((1, self.c.n_embd), np.float32)]))
        tok = self.node("Gather", [table, "input_ids"], ["tok_emb"], "embed/Gather")[0]
        slot = self.const("slot_id", np.array(slot_id(self.c), np.int64))
        is_slot = self.node("Equal", ["input_ids", slot], ["is_slot"], "embed/Equal")[0]
        is_slot = self.node("Unsqueeze", [is_slot, self.const("axis_last", np.array([-1], np.int64))], ["is_slot3"],
                            "embed/UnsqueezeMask")[0]
        ctx = self.node("Unsqueeze", ["context", self.const("axis_1", np.array([1], np.int64))], ["context3"],
                        "embed/UnsqueezeContext")[0]
        x = self.node("Where", [is_slot, ctx, tok], ["x_emb"], "embed/Where")[0]
        pos = self.node("Gather", [self.const("wpe", self.sd["transformer.wpe.weight"]), "position_ids"],
                        ["pos_emb"], "embed/GatherPos")[0]
        return self.skip_ln(x, pos, "transformer.h.0.ln_1", "h0_in")

    def layer(self, i: int, ln: str, resid: str) -> tuple[str, str]:
        """Block i from its normed input; returns the next block's (or ln_f's) normed input and the stream."""
        p, E = f"transformer.h.{i}", self.c.n_embd
        past_k, past_v, present_k, present_v = fused_cache_names(i)
        qkv = self.linear(ln, f"{p}.attn.c_attn", f"h{i}_qkv", with_bias=True)
        attn = self.node("GroupQueryAttention", [qkv, "", "", past_k, past_v, "seqlens_k", "total_sequence_length"],
                         [f"h{i}_attn", present_k, present_v], f"h{i}/GroupQueryAttention", MS_DOMAIN,
                         num_heads=self.c.n_head, kv_num_heads=self.c.n_head)[0]
        proj = self.linear(attn, f"{p}.attn.c_proj", f"h{i}_attn_proj", with_bias=True)
        ln, resid = self.skip_ln(proj, resid, f"{p}.ln_2", f"h{i}_mid")
        fc = self.linear(ln, f"{p}.mlp.c_fc", f"h{i}_fc", with_bias=False)
        gelu = self.node("BiasGelu", [fc, self.const(f"{p}.mlp.c_fc.bias", self.bias(f"{p}.mlp.c_fc.bias", 4 * E))],
                         [f"h{i}_gelu"], f"h{i}/BiasGelu", MS_DOMAIN)[0]
        mlp = self.linear(gelu, f"{p}.mlp.c_proj", f"h{i}_mlp", with_bias=True)
        next_ln = f"transformer.h.{i + 1}.ln_1" if i + 1 < self.c.n_layer else "transformer.ln_f"
        return self.skip_ln(mlp, resid, next_ln, f"h{i}_out")

    def head(self, ln: str) -> None:
        """ln is ln_f of every new row: its sum feeds the next context vector, the last row the logits."""
        self.node("ReduceSum", [ln, self.const("axes_1", np.array([1], np.int64))], ["hidden_sum"], "head/ReduceSum",
                  keepdims=0)
        last = self.node("Slice", [ln, self.const("minus_1", np.array([-1], np.int64)),
                                   self.const("int64_max", np.array([np.iinfo(np.int64).max], np.int64)),
                                   "axes_1"], ["last_hidden"], "head/SliceLast")[0]
        logits3 = self.node("MatMul", [last, self.const("lm_head.weight_t", self.sd["lm_head.weight"].T)],
                            ["logits3"], "lm_head/MatMul")[0]
        self.node("Squeeze", [logits3, "axes_1"], ["logits"], "head/Squeeze")

    def model_proto(self, opset: int) -> onnx.ModelProto:
        """The graph with its inputs and outputs as `picogpt.contract.io_spec` declares them."""
        inputs, outputs = ([helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                                          shape) for name, dtype, shape in spec]
                           for spec in io_spec("fused", self.c))
        graph = helper.make_graph(self.nodes, "picogpt_fused_decode", inputs, outputs, self.inits)
        return helper.make_model(graph, producer_name="picogpt.export.fused",
                                 opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)])


def build_fused(model: GPT, opset: int = 18) -> onnx.ModelProto:
    """The fused fp32 decode graph of `model`."""
    b = FusedBuilder(model)
    ln, resid = b.embed()
    for i in range(model.config.n_layer):
        ln, resid = b.layer(i, ln, resid)
    b.head(ln)
    return b.model_proto(opset)


def export_fused(model: GPT, path: str | Path, opset: int = 18) -> float:
    """Write the fused fp32 graph to `path`; returns seconds taken."""
    t0 = time.perf_counter()
    onnx.save(build_fused(model.eval(), opset), str(path))
    return time.perf_counter() - t0
