"""Loading `int8` files on CPUs without VNNI: the s8 weight codes as u8 + 128, exactly.

MLAS's u8 x s8 kernels without VNNI (AVX2's vpmaddubsw) add pairs of products in 16 bits and saturate
(about 4x the error of u8 weights on the bundled model); its u8 x u8 kernels widen first and do not.
`int8` files store s8 codes (the same tensors as `int8-weights`, export/convert.py), which the VNNI kernels
run fastest (u8 + zero point 128 measured ~1.4x slower there). So where VNNI is missing, the loader flips
each code's top bit (s8 + 128 as u8 is `code ^ 0x80`) and gives every such node a zero point of 128: the
same weights, and integer sums that cannot saturate.
"""

from __future__ import annotations

import numpy as np

from picogpt.runtime.protomodel import Graph, edit_model


def _to_u8(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op != "DynamicQuantizeMatMul" or graph.constants.get(node.inputs[1], np.zeros(0)).dtype != np.int8:
            continue
        codes = graph.constants[node.inputs[1]]
        zp_name = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
        if zp_name is not None and np.any(graph.constants[zp_name] != 0):
            continue  # asymmetric s8 codes: left as they are
        u8_name = node.inputs[1] + "_u8"
        graph.constants[u8_name] = codes.view(np.uint8) ^ np.uint8(0x80)
        graph.constants[u8_name + "_zero_point"] = np.full(codes.shape[1], 128, np.uint8)
        node.inputs = [node.inputs[0], u8_name, node.inputs[2], u8_name + "_zero_point", *node.inputs[4:]]


def u8_weights(model: bytes) -> bytes:
    """`model` with the s8 codes of its DynamicQuantizeMatMul nodes stored as u8 with zero point 128."""
    return edit_model(model, _to_u8)


def has_s8_linears(model: bytes) -> bool:
    """A cheap test before parsing: only files with DynamicQuantizeMatMul nodes need the rewrite."""
    return b"DynamicQuantizeMatMul" in model
