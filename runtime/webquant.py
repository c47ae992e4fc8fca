"""The browser's arithmetic: every quantized linear of a PicoGPT file rewritten to compute in fp32.

Quantizing activations as the model runs (dynamic int8, MatMulNBits' accuracy levels) turns a last-bit
float difference between two builds (WASM or native, FMA or not) into another int8 code, and at a near-tie
into another greedy character; integer kernels are also slow or missing in onnxruntime-web's WASM. So
`picogpt-web` rewrites, torch-free and without the `onnx` package:

* `DynamicQuantizeMatMul` and the `DynamicQuantizeLinear` + `MatMulInteger` + `Cast` + `Mul` chain that
  onnxruntime's `quantize_dynamic` writes: the same int8 (or u8 + zero point) codes and scales, expanded
  by `Cast` (+ `Sub`) + `Mul` into an fp32 `MatMul` (the `int8-weights` form; onnxruntime folds the
  expansion at load). s8 codes keep their tensor names, so `int8` -> here gives back `int8-weights` exactly.
* `MatMulNBits` (int4, int8 blocks): dequantized to an fp32 weight (4x the bytes of its codes).
"""

from __future__ import annotations

import numpy as np

from picogpt.runtime.protomodel import Graph, Node, int_attribute

FLOAT = 1  # TensorProto.FLOAT


def _weight_name(codes: str) -> str:
    return codes.removesuffix("_int8") if codes.endswith("_int8") else codes + "_w"


def _expand(graph: Graph, codes_name: str, scale: str, zero_point: str | None) -> tuple[str, list[Node]]:
    """Nodes computing the fp32 weight (codes - zero point) * scale from constants, and its name."""
    weight = _weight_name(codes_name)
    codes = graph.constants[codes_name]
    zp = graph.constants[zero_point] if zero_point else np.zeros((), codes.dtype)
    if codes.dtype == np.uint8 and np.all(zp == 128):  # u8 = s8 + 128: exactly the s8 codes
        codes, zp = (codes ^ np.uint8(0x80)).view(np.int8), np.zeros((), np.int8)
        codes_name = weight + "_int8"
    graph.constants[codes_name] = codes
    nodes = [Node("Cast", [codes_name], [f"{weight}_f32"], f"{weight}/Cast", attributes=[int_attribute("to", FLOAT)])]
    centred = f"{weight}_f32"
    if np.any(zp != 0):
        graph.constants[f"{weight}_zp_f32"] = np.asarray(zp, np.float32)
        nodes.append(Node("Sub", [centred, f"{weight}_zp_f32"], [f"{weight}_centred"], f"{weight}/Sub"))
        centred = f"{weight}_centred"
    nodes.append(Node("Mul", [centred, scale], [weight], f"{weight}/Scale"))
    return weight, nodes


def _linear(x: str, weight: str, bias: str | None, out: str, name: str) -> list[Node]:
    if not bias:
        return [Node("MatMul", [x, weight], [out], name)]
    add = name.replace("MatMul", "Add") if "MatMul" in name else name + "/Add"
    return [Node("MatMul", [x, weight], [out + "_mm"], name), Node("Add", [out + "_mm", bias], [out], add)]


def _arg(node: Node, i: int) -> str | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i] else None


def dequantized_nbits(graph: Graph, node: Node) -> np.ndarray:
    """The fp32 weight [K, N] of a MatMulNBits node: (code - zero point) * scale per block of K."""
    k, n = node.attribute_int("K", 0), node.attribute_int("N", 0)
    bits, block = node.attribute_int("bits", 4), node.attribute_int("block_size", 32)
    packed = graph.constants[node.inputs[1]].reshape(n, -1)
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1) if bits == 4 else packed
    blocks = -(-k // block)
    codes = codes[:, : blocks * block].reshape(n, blocks, block).astype(np.float32)
    scales = graph.constants[node.inputs[2]].astype(np.float32).reshape(n, blocks, 1)
    zp_name = _arg(node, 3)
    if zp_name is None:
        zp = np.float32(2 ** (bits - 1))
    else:
        zp = graph.constants[zp_name].reshape(n, -1)
        if bits == 4:
            zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)
        zp = zp[:, :blocks].astype(np.float32).reshape(n, blocks, 1)
    return ((codes - zp) * scales).reshape(n, -1)[:, :k].T.copy()


def _matmul_integer_chain(graph: Graph, node: Node, consumers: dict, producers: dict):
    """(x, b_scale, b_zero_point, output, nodes replaced) for a MatMulInteger written by quantize_dynamic."""
    dql = producers.get(node.inputs[0])
    cast = consumers.get(node.outputs[0], [None])[0]
    mul = consumers.get(cast.outputs[0], [None])[0] if cast is not None and cast.op == "Cast" else None
    if dql is None or dql.op != "DynamicQuantizeLinear" or mul is None or mul.op != "Mul":
        return None
    scale_mul = producers.get(next(i for i in mul.inputs if i != cast.outputs[0]))
    if scale_mul is None or scale_mul.op != "Mul" or dql.outputs[1] not in scale_mul.inputs:
        return None
    b_scale = next(i for i in scale_mul.inputs if i != dql.outputs[1])
    if b_scale not in graph.constants:
        return None
    return dql.inputs[0], b_scale, _arg(node, 3), mul.outputs[0], [node, cast, mul]


def _remove_dead(graph: Graph, outputs: set[str]) -> None:
    """Drop nodes none of whose outputs is used (the quantizing nodes the rewrite left behind)."""
    while True:
        used = {i for n in graph.nodes for i in n.inputs} | outputs
        alive = [n for n in graph.nodes if any(o in used for o in n.outputs if o)]
        if len(alive) == len(graph.nodes):
            return
        graph.nodes = alive


def to_fp32_arithmetic(graph: Graph, graph_outputs: set[str]) -> dict[str, int]:
    """Rewrite every quantized linear of `graph` in place; returns how many of each kind were rewritten."""
    consumers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    producers = {o: n for n in graph.nodes for o in n.outputs}
    expand, body, gone, done, counts = [], [], set(), {}, {}
    for node in graph.nodes:
        if id(node) in gone:
            continue
        new = None
        if node.op == "DynamicQuantizeMatMul" and node.inputs[1] in graph.constants:
            x, codes, scale, zp, bias, out = node.inputs[0], node.inputs[1], node.inputs[2], _arg(node, 3), \
                _arg(node, 4), node.outputs[0]
        elif node.op == "MatMulInteger" and node.inputs[1] in graph.constants:
            chain = _matmul_integer_chain(graph, node, consumers, producers)
            if chain is None:
                body.append(node)
                continue
            (x, scale, zp, out, replaced), codes, bias = chain, node.inputs[1], None
            gone |= {id(n) for n in replaced}
        elif node.op == "MatMulNBits" and node.inputs[1] in graph.constants:
            weight = node.inputs[1] + "_dequantized"
            graph.constants[weight] = dequantized_nbits(graph, node)
            new = _linear(node.inputs[0], weight, _arg(node, 5), node.outputs[0], node.name.removesuffix("_Q"))
        else:
            body.append(node)
            continue
        if new is None:
            if codes not in done:
                done[codes], nodes = _expand(graph, codes, scale, zp)
                expand += nodes
            new = _linear(x, done[codes], bias, out, node.name.removesuffix("_int8"))
        counts[node.op] = counts.get(node.op, 0) + 1
        body += new
    graph.nodes = expand + body  # the expansions read only constants: first keeps the order topological
    _remove_dead(graph, graph_outputs)
    return counts


def web_quantization(method: str, counts: dict[str, int]) -> str:
    """The `picogpt.quantization` of a rewritten file: int8 codes in fp32 are `int8-weights`; dequantized
    blocks keep their method's name with `-weights`."""
    if not counts:
        return method
    return "int8-weights" if "MatMulNBits" not in counts else f"{method}-weights"


def fp32_model(model: bytes) -> tuple[bytes, dict[str, int]]:
    """The ModelProto bytes with every quantized linear computing in fp32, its quantization key updated, and
    what was rewritten. A file without quantized linears comes back as it was."""
    from picogpt.contract import META_PREFIX
    from picogpt.runtime.protomodel import GRAPH_OUTPUT, edit_model, read_metadata
    from picogpt.runtime.webgraph import payload, string_of

    counts: dict[str, int] = {}

    def edit(graph: Graph) -> None:
        outputs = {string_of(payload(f), 1) for n, f in graph.other if n == GRAPH_OUTPUT}
        counts.update(to_fp32_arithmetic(graph, outputs))

    if not any(op in model for op in (b"DynamicQuantizeMatMul", b"MatMulInteger", b"MatMulNBits")):
        return model, counts
    edited = edit_model(model, edit)
    if not counts:
        return model, counts
    key = META_PREFIX + "quantization"
    method = read_metadata(model).get(key, "none")
    return edit_model(edited, metadata={key: web_quantization(method, counts)}), counts
