"""PicoGPT: train a tiny character-level GPT on a CPU, export it to ONNX, run it anywhere.

This top-level package is deliberately torch-free: the tokenizer, the config and the
sampler are pure Python / numpy so that `picogpt.runtime` works on a base install
(onnxruntime + numpy + click). Torch lives in `picogpt.model`, `picogpt.train` and
`picogpt.export`, which need the `[train]` extra.
"""

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.tokenizer import CharTokenizer

__all__ = ["GPTConfig", "CharTokenizer", "PicoError", "__version__"]
__version__ = "0.1.0"
