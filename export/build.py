"""From a loaded checkpoint to candidate .onnx files: the fp32 graph of one layout and its
quantized copies, each carrying its metadata. Shared by `picogpt-export` and `picogpt-bench`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from picogpt.checkpoint import Loaded
from picogpt.contract import metadata_dict
from picogpt.errors import PicoError
from picogpt.export.graph import export_layout
from picogpt.export.quantize import CALIBRATED, quantize


def set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Replace the `metadata_props` of the .onnx file at `path`."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))


def build_files(loaded: Loaded, work: Path, methods: list[str], layout: str = "fused", opset: int = 18,
                log: Callable[[str], None] = lambda _: None, calibration: np.ndarray | None = None,
                overlap: int | None = None) -> dict[str, Path]:
    """Write `work/fp32.onnx` and one `work/<method>.onnx` per method; returns {"none" | method: path}.
    `calibration` [B, T] ids of training text are needed by the CALIBRATED methods (int4-gptq)."""
    needs_text = [m for m in methods if m in CALIBRATED]
    if needs_text and calibration is None:
        raise PicoError(f"--quantize {needs_text[0]} needs calibration text: pass --data PATH (the training text) "
                        "or set PICOGPT_DATA")
    fp32 = work / "fp32.onnx"
    seconds = export_layout(loaded.model, fp32, layout, opset)
    how = "onnx.helper + com.microsoft kernels" if layout == "fused" else "torch.onnx.export, dynamo"
    log(f"exported the {layout} fp32 graph in {seconds:.1f} s ({how}, opset {opset})")

    def meta(quant: str) -> dict[str, str]:
        return metadata_dict(loaded.model.config, loaded.tokenizer, quant, loaded.step, loaded.val_loss, None,
                             layout, overlap)

    set_metadata(fp32, meta("none"))
    files = {"none": fp32}
    calibrated = None
    for method in methods:
        log(f"quantizing: {method} ...")
        if method in CALIBRATED and calibrated is None:
            from picogpt.export.gptq import gptq_model

            t0 = time.perf_counter()
            calibrated = gptq_model(loaded.model, calibration)
            log(f"GPTQ on {calibration.size:,} calibration characters took {time.perf_counter() - t0:.1f} s")
        files[method] = work / f"{method}.onnx"
        quantize(fp32, files[method], method, calibrated)
        set_metadata(files[method], meta(method))
    return files
