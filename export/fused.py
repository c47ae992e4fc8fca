"""The fused decode graph: the same weights, wired straight onto onnxruntime's contrib kernels.

The dynamo export (`graph.py`) is portable: standard ONNX ops only, ~330 nodes, and it copies
the KV cache in and out every step. This builder writes the same function in ~80 nodes:
per layer SkipLayerNormalization, the packed QKV linear, GroupQueryAttention (which appends the
new rows to a fixed-capacity cache *in place* when past and present share one buffer), the
output linear, SkipLayerNormalization, the FC linear, BiasGelu and the projection linear. The
projection biases ride in the next SkipLayerNormalization. Positions, `seqlens_k` and the total
length are inputs, so the graph has no Shape/Gather chains. See docs/onnx.md ("fused layout").

The linears are plain MatMul nodes here; onnxruntime's quantizers then turn them into
DynamicQuantizeMatMul (int8) or MatMulNBits (int4/int8 blocks) exactly as for the portable graph.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from picogpt.model import GPT
from picogpt.onnx_io import fused_cache_names, fused_io_names, slot_id

MS_DOMAIN = "com.microsoft"
LN_EPS = 1e-5  # the model's F.layer_norm epsilon


class _Graph:
    """Collects nodes and initializers with readable, unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs) -> list[str]:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs


def build_fused(model: GPT, opset: int = 18) -> onnx.ModelProto:
    """The fused fp32 decode graph of `model` (inputs/outputs: picogpt.onnx_io FUSED_*)."""
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    g = _Graph()
    E, H = c.n_embd, c.n_head

    def w(name: str) -> np.ndarray:
        return sd[name]

    def bias(name: str, size: int) -> np.ndarray:
        return sd[name] if name in sd else np.zeros(size, np.float32)

    def linear(x: str, prefix: str, out: str, with_bias: bool) -> str:
        """x @ W^T (+ b when `with_bias`; otherwise the caller folds the bias downstream)."""
        y = g.node("MatMul", [x, g.const(f"{prefix}.weight_t", w(f"{prefix}.weight").T)],
                   [out if not with_bias else out + "_mm"], f"{prefix}/MatMul")[0]
        if with_bias:
            b = g.const(f"{prefix}.bias", bias(f"{prefix}.bias", w(f"{prefix}.weight").shape[0]))
            y = g.node("Add", [y, b], [out], f"{prefix}/Add")[0]
        return y

    def skip_ln(x: str, skip: str, ln: str, extra_bias: str | None, tag: str) -> tuple[str, str]:
        """LayerNorm(x + skip + bias) with the sum as a second output (the new residual stream)."""
        gamma = g.const(f"{ln}.weight", w(f"{ln}.weight"))
        beta = g.const(f"{ln}.bias", bias(f"{ln}.bias", E))
        ins = [x, skip, gamma, beta] + ([g.const(extra_bias, bias(extra_bias, E))] if extra_bias else [])
        out, _, _, total = g.node("SkipLayerNormalization", ins, [f"{tag}_ln", "", "", f"{tag}_sum"], f"{tag}/SkipLN",
                                  MS_DOMAIN, epsilon=LN_EPS)
        return out, total

    # Embedding: the slot id indexes an extra zero row, then `Where` swaps in the context vector.
    wte = w("transformer.wte.weight")
    table = g.const("wte_with_slot_row", np.concatenate([wte, np.zeros((1, E), np.float32)]))
    tok = g.node("Gather", [table, "input_ids"], ["tok_emb"], "embed/Gather")[0]
    slot = g.const("slot_id", np.array(slot_id(c), np.int64))
    is_slot = g.node("Equal", ["input_ids", slot], ["is_slot"], "embed/Equal")[0]
    is_slot = g.node("Unsqueeze", [is_slot, g.const("axis_last", np.array([-1], np.int64))], ["is_slot3"],
                     "embed/UnsqueezeMask")[0]
    ctx = g.node("Unsqueeze", ["context", g.const("axis_1", np.array([1], np.int64))], ["context3"],
                 "embed/UnsqueezeContext")[0]
    x = g.node("Where", [is_slot, ctx, tok], ["x_emb"], "embed/Where")[0]
    pos = g.node("Gather", [g.const("wpe", w("transformer.wpe.weight")), "position_ids"], ["pos_emb"],
                 "embed/GatherPos")[0]

    ln, resid = skip_ln(x, pos, "transformer.h.0.ln_1", None, "h0_in")
    for i in range(c.n_layer):
        p = f"transformer.h.{i}"
        past_k, past_v, present_k, present_v = fused_cache_names(i)
        qkv = linear(ln, f"{p}.attn.c_attn", f"h{i}_qkv", with_bias=True)
        attn = g.node("GroupQueryAttention", [qkv, "", "", past_k, past_v, "seqlens_k", "total_sequence_length"],
                      [f"h{i}_attn", present_k, present_v], f"h{i}/GroupQueryAttention", MS_DOMAIN,
                      num_heads=H, kv_num_heads=H)[0]
        proj = linear(attn, f"{p}.attn.c_proj", f"h{i}_attn_proj", with_bias=False)
        ln, resid = skip_ln(proj, resid, f"{p}.ln_2", f"{p}.attn.c_proj.bias", f"h{i}_mid")
        fc = linear(ln, f"{p}.mlp.c_fc", f"h{i}_fc", with_bias=False)
        gelu = g.node("BiasGelu", [fc, g.const(f"{p}.mlp.c_fc.bias", bias(f"{p}.mlp.c_fc.bias", 4 * E))],
                      [f"h{i}_gelu"], f"h{i}/BiasGelu", MS_DOMAIN)[0]
        mlp = linear(gelu, f"{p}.mlp.c_proj", f"h{i}_mlp", with_bias=False)
        next_ln = f"transformer.h.{i + 1}.ln_1" if i + 1 < c.n_layer else "transformer.ln_f"
        ln, resid = skip_ln(mlp, resid, next_ln, f"{p}.mlp.c_proj.bias", f"h{i}_out")

    # ln is now ln_f of every new row: its sum feeds the next context vector, the last row the logits.
    g.node("ReduceSum", [ln, g.const("axes_1", np.array([1], np.int64))], ["hidden_sum"], "head/ReduceSum",
           keepdims=0)
    last = g.node("Slice", [ln, g.const("minus_1", np.array([-1], np.int64)),
                            g.const("int64_max", np.array([np.iinfo(np.int64).max], np.int64)),
                            "axes_1"], ["last_hidden"], "head/SliceLast")[0]
    logits3 = g.node("MatMul", [last, g.const("lm_head.weight_t", w("lm_head.weight").T)], ["logits3"],
                     "lm_head/MatMul")[0]
    g.node("Squeeze", [logits3, "axes_1"], ["logits"], "head/Squeeze")

    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    cache_shape = ["batch", H, c.n_positions, c.head_size]
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "new"]),
              helper.make_tensor_value_info("context", f32, ["batch", E]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "new"]),
              helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", i32, [])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", c.vocab_size]),
               helper.make_tensor_value_info("hidden_sum", f32, ["batch", E])]
    for i in range(c.n_layer):
        past_k, past_v, present_k, present_v = fused_cache_names(i)
        inputs += [helper.make_tensor_value_info(n, f32, cache_shape) for n in (past_k, past_v)]
        outputs += [helper.make_tensor_value_info(n, f32, cache_shape) for n in (present_k, present_v)]
    assert ([i.name for i in inputs], [o.name for o in outputs]) == fused_io_names(c.n_layer)
    graph = helper.make_graph(g.nodes, "picogpt_fused_decode", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS_DOMAIN, 1)],
                             producer_name="picogpt.export.fused")


def export_fused(model: GPT, path: str | Path, opset: int = 18) -> float:
    """Write the fused fp32 graph to `path`; returns seconds taken."""
    t0 = time.perf_counter()
    onnx.save(build_fused(model.eval(), opset), str(path))
    return time.perf_counter() - t0
