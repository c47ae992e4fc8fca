"""From a loaded checkpoint to candidate .onnx files: the fp32 graph of one layout and its
quantized copies, each carrying its metadata. Shared by `picogpt-export` and `picogpt-bench`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from picogpt.export.graph import export_layout
from picogpt.export.loading import Loaded
from picogpt.export.quantize import quantize
from picogpt.onnx_io import metadata_dict


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
                log: Callable[[str], None] = lambda _: None) -> dict[str, Path]:
    """Write `work/fp32.onnx` and one `work/<method>.onnx` per method; returns {"none" | method: path}."""
    fp32 = work / "fp32.onnx"
    seconds = export_layout(loaded.model, fp32, layout, opset)
    how = "onnx.helper + com.microsoft kernels" if layout == "fused" else "torch.onnx.export, dynamo"
    log(f"exported the {layout} fp32 graph in {seconds:.1f} s ({how}, opset {opset})")

    def meta(quant: str) -> dict[str, str]:
        return metadata_dict(loaded.model.config, loaded.tokenizer, quant, loaded.step, loaded.val_loss, None,
                             layout)

    set_metadata(fp32, meta("none"))
    files = {"none": fp32}
    for method in methods:
        log(f"quantizing: {method} ...")
        files[method] = work / f"{method}.onnx"
        quantize(fp32, files[method], method)
        set_metadata(files[method], meta(method))
    return files
