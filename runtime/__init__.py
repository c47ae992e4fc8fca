"""Runtime stage: generate text from an exported PicoGPT .onnx with onnxruntime + numpy only (no torch)."""

from picogpt.runtime.generator import Generator, bundled_model_path

__all__ = ["Generator", "bundled_model_path"]
