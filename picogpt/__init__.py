"""PicoGPT: train a tiny character-level GPT on a CPU, export it to ONNX, run it anywhere.

The modules at this level are the torch-free core (config, tokenizer, sampling, windows, contract,
generation, errors, system), so `picogpt.runtime` works on a base install (onnxruntime + numpy +
click). `picogpt.data` is numpy (plus `datasets` for Wikipedia). Torch lives in `picogpt.model`,
`picogpt.checkpoint`, `picogpt.train`, `picogpt.export` and `picogpt.bench`, which need the
`[train]` extra. The README's "How the code is laid out" walks the stages in order.
"""

from picogpt.config import GPTConfig
from picogpt.errors import PicoError
from picogpt.tokenizer import CharTokenizer

__all__ = ["GPTConfig", "CharTokenizer", "PicoError", "__version__"]
__version__ = "0.1.0"
