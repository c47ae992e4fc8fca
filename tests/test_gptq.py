"""GPTQ int4 (export/gptq.py): the codes are packed exactly as onnxruntime packs its own, the
graph computes what the codes hold, and GPTQ beats round-to-nearest on what it optimises."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_CONFIG
from picogpt.export.gptq import gptq_codes, gptq_model, rtn_codes
from picogpt.export.quantize import quantize, with_block_codes
from picogpt.runtime.decoder import OnnxDecoder

pytestmark = pytest.mark.slow  # multi-process / quantization: minutes

CFG = TINY_CONFIG


def initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("method,bits", [("int4", 4), ("int8-block", 8)])
def test_rtn_codes_pack_exactly_as_onnxruntime(random_model, exported: Path, tmp_path: Path, method: str,
                                               bits: int) -> None:
    """The reference: onnxruntime's MatMulNBitsQuantizer on the same weights writes the same bytes."""
    out = tmp_path / "ort.onnx"
    quantize(exported, out, method)
    ort = initializers(out)
    checked = 0
    for name, module in random_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            ours = rtn_codes(module.weight.detach(), bits).packed()
            key = f"{name}.weight_t"
            for mine, suffix in zip(ours, (f"_Q{bits}", "_scales", "_zero_points")):
                assert np.array_equal(mine, ort[key + suffix].reshape(mine.shape)), key + suffix
            checked += 1
    assert checked == 4 * CFG.n_layer + 1


def test_gptq_beats_round_to_nearest_on_layer_outputs() -> None:
    """GPTQ minimises |X W^T - X Q^T| for inputs like the calibration's; so must it, held-out too."""
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(96, 96, generator=gen) * torch.linspace(0.1, 3, 96)  # correlated, uneven inputs
    x_cal, x_new = (torch.randn(4000, 96, generator=gen) @ mixing for _ in range(2))
    w = torch.randn(48, 96, generator=gen) * 0.05
    gptq, rtn = gptq_codes(w, x_cal.T @ x_cal), rtn_codes(w)
    assert gptq.codes.max() <= 15 and np.array_equal(gptq.scales, rtn.scales)  # same grid, other codes
    for x in (x_cal, x_new):
        err = {k: float((x @ (torch.from_numpy(c.dequantize()) - w).T).norm()) for k, c in
               (("gptq", gptq), ("rtn", rtn))}
        assert err["gptq"] < 0.7 * err["rtn"], err


def fake_quantized(model, calibrated) -> torch.nn.Module:
    """The torch model with each linear's weight replaced by what its codes dequantize to (a new
    Parameter: lm_head is tied to the embedding, which the graph keeps in fp32)."""
    ref = copy.deepcopy(model)
    linears = [m for m in ref.modules() if isinstance(m, torch.nn.Linear)]
    for module, (_, codes) in zip(linears, calibrated):
        module.weight = torch.nn.Parameter(torch.from_numpy(codes.dequantize()[:, : module.in_features]))
    return ref


def test_block_codes_graph_computes_what_the_codes_hold(random_model, exported_any: Path, tmp_path: Path) -> None:
    """llama2.c style: torch with the dequantized weights is the reference for the MatMulNBits graph
    (accuracy_level 1, fp32 activations, so the two must agree to float rounding), in both layouts."""
    import onnx

    calibration = np.random.default_rng(0).integers(0, CFG.vocab_size - 8, size=(8, 3 * CFG.context_len))
    calibrated = gptq_model(random_model, calibration)
    assert [c.bits for _, c in calibrated].count(8) == 1  # lm_head only
    graph = with_block_codes(onnx.load(str(exported_any)), calibrated, accuracy_level=1)
    ops = [n.op_type for n in graph.graph.node]
    in_graph = calibrated  # lm_head is the last linear
    if OnnxDecoder(exported_any).metadata["layout"] == "portable":
        # torch.onnx.export writes lm_head as a Gemm, which stays fp32 (so it does with onnxruntime's quantizer)
        in_graph = calibrated[:-1]
        assert ops.count("Gemm") == 1
    else:
        assert "MatMul" not in ops  # (the portable graph's attention products are MatMuls too)
    assert ops.count("MatMulNBits") == len(in_graph)
    path = tmp_path / "gptq.onnx"
    onnx.save(graph, str(path))
    ids = torch.randint(0, CFG.vocab_size - 8, (2, 2 * CFG.context_len + 3))
    dec = OnnxDecoder(path, threads=1)
    with torch.no_grad():
        ref, _ = fake_quantized(random_model, in_graph)(ids, overlap=dec.overlap)
    state = dec.new_state(2)
    got = np.stack([dec.feed(ids[:, t : t + 1].numpy(), state) for t in range(ids.shape[1])], axis=1)
    assert np.abs(got - ref.numpy()).max() < 1e-4
