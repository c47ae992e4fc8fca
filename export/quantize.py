"""Quantization with onnxruntime's own tools: dynamic int8 and weight-only MatMulNBits int4/int8."""

from __future__ import annotations

from pathlib import Path

from picogpt.system import has_vnni

METHODS = ("int8", "int8-channel", "int4", "int8-block")


def quantize(src: Path, dst: Path, method: str) -> None:
    """Write a quantized copy of `src` to `dst` (metadata is added again by the caller)."""
    import logging

    import onnx

    # onnxruntime's quantizer logs a generic "consider pre-processing" warning on the root logger.
    logging.getLogger().setLevel(logging.ERROR)
    if method in ("int8", "int8-channel"):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Without VNNI, MLAS's u8s8 kernels saturate the 16-bit intermediate sums (measured ~4x the
        # error of u8 weights here): use u8 weights, or reduce_range when signed weights are wanted.
        vnni = has_vnni()
        quantize_dynamic(
            src, dst, op_types_to_quantize=["MatMul"], per_channel=method == "int8-channel",
            reduce_range=not vnni and method == "int8-channel",
            weight_type=QuantType.QInt8 if vnni else QuantType.QUInt8,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return
    if method in ("int4", "int8-block"):
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        bits = 4 if method == "int4" else 8
        # accuracy_level 4: activations quantized to int8 inside the kernel, the fastest CPU path.
        # Asymmetric blocks of 32: on the pretrained model the most accurate of the RTN/HQQ variants
        # tried (block 16/32/128, symmetric or not, HQQ; see docs/onnx.md), at 4.4 MB.
        cfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=4, bits=bits)
        q = MatMulNBitsQuantizer(onnx.load(src), bits=bits, block_size=32, is_symmetric=False, accuracy_level=4,
                                 algo_config=cfg)
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
        return
    raise ValueError(f"unknown quantization {method!r}")
