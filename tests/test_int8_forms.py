"""The two int8 forms and the browser's file: exact rewrites between `int8` and `int8-weights`, u8 codes
for CPUs without VNNI, and picogpt-web's fp32 rewrite of any quantized file (torch-free, without onnx)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import meta_of, run_cli
from picogpt.runtime.decoder import OnnxDecoder


def quantized(src: Path, folder: Path, method: str) -> Path:
    """`src` quantized by the exporter's `method`, its picogpt.* metadata carried over."""
    import onnx

    from picogpt.export.build import set_metadata
    from picogpt.export.quantize import quantize

    out = folder / f"{src.stem}-{method}.onnx"
    quantize(src, out, method)
    set_metadata(out, {**meta_of(src), "picogpt.quantization": method})
    onnx.checker.check_model(str(out))
    return out


def graph_of(path_or_bytes) -> tuple[list[bytes], dict[str, bytes]]:
    import onnx

    m = onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, bytes) else onnx.load(str(path_or_bytes))
    return [n.SerializeToString() for n in m.graph.node], {t.name: t.SerializeToString() for t in m.graph.initializer}


def logits_of(path: Path, ids: np.ndarray) -> np.ndarray:
    decoder = OnnxDecoder(path)
    state = decoder.new_state(ids.shape[0])
    return np.stack([decoder.feed(ids[:, t : t + 1], state) for t in range(ids.shape[1])], axis=1)


def test_int8_and_int8_weights_rewrite_into_each_other_exactly(exported_any: Path, tmp_path: Path) -> None:
    """Same codes, same scales, same names: int8-weights -> int8 is the exporter's int8, and back is the original."""
    import onnx

    from picogpt.export.convert import convert_file, to_dynamic_int8

    weights, int8 = quantized(exported_any, tmp_path, "int8-weights"), quantized(exported_any, tmp_path, "int8")
    nodes, inits = graph_of(int8)
    ops = [onnx.NodeProto.FromString(n).op_type for n in nodes]
    assert ops.count("DynamicQuantizeMatMul") == 8 and "Cast" not in ops  # 4 linears x 2 layers
    assert graph_of(to_dynamic_int8(onnx.load(str(weights))).SerializeToString()) == (nodes, inits)
    back = tmp_path / "back.onnx"
    stored, new = convert_file(int8, back, "int8-weights")
    assert stored == new  # the fingerprint was re-run on the new file
    assert graph_of(back)[1] == graph_of(weights)[1] and meta_of(back) == meta_of(weights)  # every tensor
    if "fused" in exported_any.name:  # its names are the exporter's own: the very same graph comes back
        assert graph_of(back)[0] == graph_of(weights)[0]
    ids = np.random.default_rng(0).integers(1, 60, size=(2, 20))
    np.testing.assert_array_equal(logits_of(back, ids), logits_of(weights, ids))


def test_u8_codes_for_cpus_without_vnni_compute_the_same_logits(exported: Path, tmp_path: Path) -> None:
    """s8 codes + 128 as u8 with zero point 128 are the same weights: integer sums and logits are identical."""
    import onnx
    from onnx import numpy_helper

    from picogpt.runtime.int8load import u8_weights

    int8 = quantized(exported, tmp_path, "int8")
    u8 = tmp_path / "u8.onnx"
    u8.write_bytes(u8_weights(int8.read_bytes()))
    model = onnx.load(str(u8))
    codes = {n.input[1] for n in model.graph.node if n.op_type == "DynamicQuantizeMatMul"}
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert len(codes) == 8 and all(arrays[c].dtype == np.uint8 for c in codes)
    assert all(np.all(arrays[n.input[3]] == 128) for n in model.graph.node if n.op_type == "DynamicQuantizeMatMul")
    ids = np.random.default_rng(0).integers(1, 60, size=(2, 40))
    np.testing.assert_array_equal(logits_of(u8, ids), logits_of(int8, ids))


def test_decoder_loads_u8_codes_where_vnni_is_missing(exported: Path, tmp_path: Path, monkeypatch) -> None:
    import picogpt.runtime.int8load as int8load
    import picogpt.system

    int8 = quantized(exported, tmp_path, "int8")
    ids = np.random.default_rng(2).integers(1, 60, size=(1, 30))
    want = logits_of(int8, ids)
    rewrites = []
    monkeypatch.setattr(picogpt.system, "has_vnni", lambda: False)
    monkeypatch.setattr(int8load, "u8_weights", lambda data, f=int8load.u8_weights: rewrites.append(1) or f(data))
    np.testing.assert_array_equal(logits_of(int8, ids), want)
    assert rewrites == [1]
    logits_of(exported, ids)  # an fp32 file has nothing to rewrite
    assert rewrites == [1]


@pytest.mark.parametrize("method", ["int8", "int8-channel", "int4"])
def test_page_file_computes_in_fp32_and_verifies_natively(exported: Path, tmp_path: Path, method: str) -> None:
    """picogpt-web rewrites DynamicQuantizeMatMul, quantize_dynamic's MatMulInteger chain and MatMulNBits
    into fp32 linears; `picogpt-run --verify` on the page's own file passes (its fingerprint is its own)."""
    src = quantized(exported, tmp_path, method)
    site = tmp_path / "site"
    proc = run_cli("picogpt.runtime.web", str(src), "-o", str(site))
    assert proc.returncode == 0, proc.stderr
    page_file = site / src.name
    ops = {n.op_type for n in __import__("onnx").load(str(page_file)).graph.node}
    assert not ops & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits"}, ops
    side = json.loads((site / "model.json").read_text())
    assert side["metadata"] == meta_of(page_file)
    assert side["metadata"]["picogpt.quantization"] == ("int4-weights" if method == "int4" else "int8-weights")
    run = run_cli("picogpt.runtime", "-m", str(page_file), "--verify")
    assert run.returncode == 0 and "fingerprint OK" in run.stdout, run.stderr
    ids = np.random.default_rng(1).integers(1, 60, size=(1, 40))
    got, want = logits_of(page_file, ids), logits_of(src, ids)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()  # the same weights; only activations differ
    if method == "int8":  # the same codes in fp32: exactly the int8-weights file's logits
        np.testing.assert_array_equal(got, logits_of(quantized(exported, tmp_path, "int8-weights"), ids))


def with_skip_layernorm(src: Path, dst: Path) -> None:
    """`src` as files were written before the exporter left onnxruntime's SkipLayerNormalization: each residual
    Add + LayerNormalization as one such node, the projection bias as its fifth input."""
    import onnx
    from onnx import helper

    m = onnx.load(str(src))
    producers = {o: n for n in m.graph.node for o in n.output}
    drop, nodes = set(), []
    for n in m.graph.node:
        if n.op_type != "LayerNormalization":
            continue
        add = producers[n.input[0]]
        x, skip = add.input
        ins, bias_add = [x, skip, n.input[1], n.input[2]], producers.get(x)
        if bias_add is not None and bias_add.op_type == "Add" and bias_add.name.endswith("c_proj/Add"):
            ins = [bias_add.input[0], skip, n.input[1], n.input[2], bias_add.input[1]]
            drop.add(bias_add.name)
        drop |= {add.name, n.name}
        tag = n.name.split("/")[0]
        nodes.append(helper.make_node("SkipLayerNormalization", ins, [n.output[0], "", "", add.output[0]],
                                      name=f"{tag}/SkipLN", domain="com.microsoft", epsilon=1e-5))
    kept = [n for n in m.graph.node if n.name not in drop]
    order = {o: i for i, n in enumerate(m.graph.node) for o in n.output}  # keep the graph topologically sorted
    merged = sorted(kept + nodes, key=lambda n: max(order.get(o, -1) for o in n.output if o))
    del m.graph.node[:]
    m.graph.node.extend(merged)
    onnx.save(m, str(dst))


def test_a_file_with_skip_layernorm_converts_to_todays_graph(exported: Path, tmp_path: Path) -> None:
    """Files written with SkipLayerNormalization still load, and convert rewrites them to Add + LayerNormalization
    (faster on several rows) with the same function."""
    import onnx

    from picogpt.export.convert import convert_file

    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    with_skip_layernorm(quantized(exported, tmp_path, "int8-weights"), old)
    assert [n.op_type for n in onnx.load(str(old)).graph.node].count("SkipLayerNormalization") == 5
    stored, fresh = convert_file(old, new, "int8")
    assert stored == fresh  # the greedy fingerprint holds on the rewritten file
    ops = [n.op_type for n in onnx.load(str(new)).graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 5
    ids = np.random.default_rng(1).integers(1, 60, size=(2, 40))  # across windows of 16
    np.testing.assert_allclose(logits_of(new, ids), logits_of(quantized(exported, tmp_path, "int8"), ids),
                               atol=1e-4)
    np.testing.assert_allclose(logits_of(old, ids), logits_of(quantized(exported, tmp_path, "int8-weights"), ids),
                               atol=1e-4)
