"""Runtime stage: generate text from an exported PicoGPT .onnx with onnxruntime + numpy only (no torch)."""

from picogpt.runtime.generator import Generator, bundled_model_path
from picogpt.sampling import SamplingConfig

__all__ = ["Generator", "SamplingConfig", "bundled_model_path"]
