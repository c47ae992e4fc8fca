"""Exact rewrites between the two int8 forms of a fused PicoGPT file, without the checkpoint (torch-free).

`int8-weights` stores each linear as int8 codes and one fp32 scale per output column, expanded by
Cast + Mul and multiplied in fp32 (what the browser runs, see runtime/webquant.py). `int8` multiplies
the same codes in integer arithmetic: one `DynamicQuantizeMatMul` per linear, activations quantized to
u8 as it runs. The codes and scales are the same tensors, under the same names, both ways; only the
arithmetic changes. (On CPUs without VNNI the runtime loads the s8 codes as u8 + 128: runtime/int8load.py.)

    python -m picogpt.export.convert IN.onnx -o OUT.onnx [--to int8|int8-weights]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from picogpt.contract import FINGERPRINT_CHARS, META_PREFIX

MS_DOMAIN = "com.microsoft"
FORMS = ("int8", "int8-weights")


def _consumers(model) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _bias_add(node, consumers: dict[str, list], inits: dict) -> tuple[object | None, str | None]:
    """The Add that adds a constant 1-D bias to `node`'s only output (folded into the int8 linear), or None."""
    users = consumers.get(node.output[0], [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None, None
    add = users[0]
    bias = next((i for i in add.input if i != node.output[0]), None)
    return (add, bias) if bias in inits and len(inits[bias].dims) == 1 else (None, None)


def to_dynamic_int8(model):
    """int8-weights -> int8: each MatMul on a Cast + Mul-expanded weight becomes a DynamicQuantizeMatMul on the
    same s8 codes and per-column scales; a bias Add after it moves into the node's bias input."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = _consumers(model)
    drop, replaced = set(), {}
    for node in model.graph.node:
        mul = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        cast = producers.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits or mul.input[1] not in inits:
            continue
        if numpy_helper.to_array(inits[cast.input[0]]).dtype != np.int8:
            continue
        add, bias = _bias_add(node, consumers, inits)
        ins = [node.input[0], cast.input[0], mul.input[1]] + (["", bias] if add is not None else [])
        out = add.output[0] if add is not None else node.output[0]
        replaced[node.name] = helper.make_node("DynamicQuantizeMatMul", ins, [out], name=node.name + "_int8",
                                               domain=MS_DOMAIN)
        drop |= {add.name} if add is not None else set()
    nodes = [replaced.get(n.name, n) for n in model.graph.node if n.name not in drop]
    for _ in range(2):  # the Mul expanding a weight is now unused, then the Cast feeding it
        used = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
        nodes = [n for n in nodes if n.op_type not in ("Cast", "Mul") or any(o in used for o in n.output)]
    _replace_graph(model, nodes, [])
    if replaced and not any(o.domain == MS_DOMAIN for o in model.opset_import):  # the portable graph's case
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return model


def to_int8_weights(model):
    """int8 -> int8-weights, with onnx (the base install's picogpt-web does the same without it,
    runtime/webquant.py): the same codes expanded by Cast (+ Sub) + Mul into an fp32 MatMul."""
    from picogpt.runtime.protomodel import Graph
    from picogpt.runtime.webquant import to_fp32_arithmetic

    graph = Graph.parse(model.graph.SerializeToString())
    to_fp32_arithmetic(graph, {o.name for o in model.graph.output})
    model.graph.ParseFromString(graph.to_bytes())
    return model


def split_skip_layernorm(model):
    """SkipLayerNormalization (files written before the exporter stopped using it) -> Add (+ the bias Add) +
    LayerNormalization, the nodes export/fused.py writes now: the same function, faster on several rows."""
    from onnx import helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        x, skip, gamma, beta, *rest = list(node.input)
        ln, total = node.output[0], node.output[3] if len(node.output) > 3 and node.output[3] else node.name + "_sum"
        tag = node.name.split("/")[0]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        if rest and rest[0]:
            nodes.append(helper.make_node("Add", [x, rest[0]], [f"{tag}_biased"], name=f"{tag}/AddBias"))
            x = f"{tag}_biased"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{tag}/AddSkip"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma, beta], [ln], name=f"{tag}/LayerNorm",
                                      axis=-1, epsilon=eps))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _replace_graph(model, nodes: list, new_inits: list) -> None:
    used = {i for n in nodes for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept + [t for t in new_inits if t.name in used])


def quantization_of(model) -> str:
    return next((p.value for p in model.metadata_props if p.key == META_PREFIX + "quantization"), "none")


def convert_file(src: Path, dst: Path, form: str, refingerprint: bool = False) -> tuple[str, str]:
    """Rewrite `src` into `form`, keeping every `picogpt.*` key (quantization updated). The greedy fingerprint
    is recomputed on the new file and compared with the stored one: (stored, new). With `refingerprint` a
    difference is written into the file; without it, the stored one stays and the caller decides."""
    import onnx

    model = onnx.load(str(src))
    split_skip_layernorm(to_int8_weights(model))  # from the one form every rewrite starts from
    if form == "int8":
        to_dynamic_int8(model)  # folds each bias Add back into its linear
    for p in model.metadata_props:
        if p.key == META_PREFIX + "quantization":
            p.value = form
    onnx.checker.check_model(model)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=dst.parent if str(dst.parent) else ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the file unreadable to others
    try:
        onnx.save(model, tmp)
        stored, new = _fingerprints(Path(tmp))
        if new != stored and refingerprint:
            fp = next(p for p in model.metadata_props if p.key == META_PREFIX + "fingerprint")
            fp.value = json.dumps({**json.loads(fp.value), "greedy": new})
            onnx.save(model, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return stored, new


def _fingerprints(path: Path) -> tuple[str, str]:
    """(stored fingerprint, the file's own greedy text for the stored prompt)."""
    from picogpt.generation import greedy_text
    from picogpt.runtime.decoder import OnnxDecoder

    decoder = OnnxDecoder(path, threads=1)
    fp = json.loads(decoder.metadata["fingerprint"])
    return fp["greedy"], greedy_text(decoder, decoder.tokenizer, fp["prompt"], FINGERPRINT_CHARS)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m picogpt.export.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--to", choices=FORMS, default="int8")
    p.add_argument("--refingerprint", action="store_true",
                   help="If the new file's greedy text differs from the stored fingerprint, store the new one.")
    a = p.parse_args(argv)
    stored, new = convert_file(a.src, a.output, a.to, a.refingerprint)
    same = "matches" if stored == new else ("differs; stored the new one" if a.refingerprint else "DIFFERS")
    print(f"wrote {a.output} ({a.to}); greedy fingerprint on the new file {same} ({len(new)} characters)")
    if stored != new and not a.refingerprint:
        print(f"stored: {stored!r}\nnew:    {new!r}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
