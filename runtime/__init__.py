"""Runtime stage: generate text from an exported PicoGPT .onnx with onnxruntime + numpy only (no torch)."""

from picogpt.runtime.generator import Generator, Stream, bundled_model_path
from picogpt.sampling import SamplingConfig

__all__ = ["Generator", "SamplingConfig", "Stream", "bundled_model_path"]
