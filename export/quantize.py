"""Quantization: int8 codes per output column run as integers (`int8`, the default) or stored only and run in
fp32 (`int8-weights`), onnxruntime's own tools (per-channel dynamic int8, weight-only MatMulNBits int4/int8),
and MatMulNBits nodes holding GPTQ codes (export/gptq.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from picogpt.system import has_vnni

if TYPE_CHECKING:
    import onnx

    from picogpt.export.gptq import BlockCodes

METHODS = ("int8", "int8-channel", "int4", "int4-gptq", "int8-block", "int8-weights")
CALIBRATED = ("int4-gptq",)  # methods that need calibration text (see export/gptq.py)


def quantize(src: Path, dst: Path, method: str, calibrated: list[tuple[np.ndarray, BlockCodes]] | None = None) -> None:
    """Write a quantized copy of `src` to `dst` (metadata is added again by the caller).
    `calibrated`: (fp32 weight [N, K], its codes) pairs, for the CALIBRATED methods."""
    import logging

    import onnx

    # onnxruntime's quantizer logs a generic "consider pre-processing" warning on the root logger.
    logging.getLogger().setLevel(logging.ERROR)
    if method == "int8":
        # int8-weights' per-column codes, multiplied as integers (DynamicQuantizeMatMul): the fastest native
        # linear here, and an exact rewrite of int8-weights both ways (export/convert.py).
        from picogpt.export.convert import to_dynamic_int8

        onnx.save(to_dynamic_int8(with_int8_weights(onnx.load(src))), str(dst))
        return
    if method == "int8-channel":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Without VNNI, MLAS's u8s8 kernels saturate the 16-bit intermediate sums (measured ~4x the
        # error of u8 weights here): reduce_range when signed weights are wanted.
        vnni = has_vnni()
        # The lm_head stays fp32 (88 x 256, 0.07 MB; the portable graph's is a Gemm, left fp32 the same way):
        # on the bundled model int8 top-1 agreement went from 98.81% to 99.30% on 12,288 val positions.
        lm_head = [n.name for n in onnx.load(src, load_external_data=False).graph.node if n.name.startswith("lm_head")]
        quantize_dynamic(
            src, dst, op_types_to_quantize=["MatMul"], per_channel=True, nodes_to_exclude=lm_head,
            reduce_range=not vnni, weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return
    if method in ("int4", "int8-block"):
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        # that module calls logging.basicConfig(level=INFO) on import, then logs every node: errors only
        for name in ("", "onnxruntime.quantization.matmul_nbits_quantizer"):
            logging.getLogger(name).setLevel(logging.ERROR)
        bits = 4 if method == "int4" else 8
        # accuracy_level 4: activations quantized to int8 inside the kernel, the fastest CPU path.
        # Asymmetric blocks of 32: the most accurate of the round-to-nearest and HQQ variants compared
        # (block 16/32/128, symmetric or not; docs/design.md, "Quantization"), at 4.4 MB.
        cfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=4, bits=bits)
        q = MatMulNBitsQuantizer(onnx.load(src), bits=bits, block_size=32, is_symmetric=False, accuracy_level=4,
                                 algo_config=cfg)
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
        return
    if method == "int8-weights":
        onnx.save(with_int8_weights(onnx.load(src)), str(dst))
        return
    if method in CALIBRATED:
        if calibrated is None:
            raise ValueError(f"{method} needs calibrated codes")
        onnx.save(with_block_codes(onnx.load(src), calibrated), str(dst))
        return
    raise ValueError(f"unknown quantization {method!r}")


def constant_weight(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    """The 2-D initializer a MatMul node multiplies by (a linear's weight, W^T), or None."""
    b = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
    return b if b is not None and len(b.dims) == 2 else None


def with_int8_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each MatMul's constant weight (the lm_head's excepted, as for int8) stored as int8
    codes and one fp32 scale per output column, expanded back by Cast + Mul nodes on those constants.

    onnxruntime folds the Cast + Mul at session load, natively and in WASM, so the file is a quarter
    of fp32's size but its arithmetic is fp32's: no activation is quantized, and nothing turns a
    last-bit difference between two builds (FMA or not) into a different int8 code. That keeps the
    greedy text identical in the browser (docs/onnx.md); the price is fp32's native speed."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    expand: list = []
    stored: set[str] = set()
    for node in model.graph.node:
        b = constant_weight(node, inits)
        if b is None or node.name.startswith("lm_head") or b.name in stored:
            continue
        w = numpy_helper.to_array(b)  # [K, N]: y = x @ w, so a column is one output channel
        scale = np.abs(w).max(axis=0) / 127
        scale = np.where(scale > 0, scale, 1).astype(np.float32)
        codes = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        model.graph.initializer.remove(b)
        model.graph.initializer.extend([numpy_helper.from_array(codes, f"{b.name}_int8"),
                                        numpy_helper.from_array(scale, f"{b.name}_scale")])
        expand += [helper.make_node("Cast", [f"{b.name}_int8"], [f"{b.name}_f32"], name=f"{b.name}/Cast",
                                    to=TensorProto.FLOAT),
                   helper.make_node("Mul", [f"{b.name}_f32", f"{b.name}_scale"], [b.name], name=f"{b.name}/Scale")]
        stored.add(b.name)
    nodes = expand + list(model.graph.node)  # constants first keeps the node list topologically sorted
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _digest(weight_t: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(weight_t, np.float32).tobytes()).hexdigest() + str(weight_t.shape)


def with_block_codes(model: onnx.ModelProto, calibrated: list[tuple[np.ndarray, BlockCodes]],
                     accuracy_level: int = 4) -> onnx.ModelProto:
    """`model` with every MatMul whose constant B is one of the calibrated weights (as W^T, found by
    value, so any layout works) replaced by a MatMulNBits node holding that weight's codes."""
    from onnx import helper, numpy_helper

    codes_of = {_digest(weight.T): codes for weight, codes in calibrated}
    inits = {t.name: t for t in model.graph.initializer}
    nodes, added = [], []
    for node in model.graph.node:
        b = constant_weight(node, inits)
        codes = codes_of.get(_digest(numpy_helper.to_array(b))) if b is not None else None
        if codes is None:
            nodes.append(node)
            continue
        k, n = b.dims
        names = [f"{b.name}_q{codes.bits}", f"{b.name}_scales", f"{b.name}_zero_points"]
        if names[0] not in {t.name for t in added}:  # a weight shared by two MatMuls is stored once
            added += [numpy_helper.from_array(a, name) for a, name in zip(codes.packed(), names)]
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], *names], list(node.output), name=node.name + "_Q",
                                      domain="com.microsoft", K=k, N=n, bits=codes.bits, block_size=codes.block,
                                      accuracy_level=accuracy_level))
    used = {i for node in nodes for i in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept + added)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model
