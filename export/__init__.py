"""Export stage: checkpoint -> one self-describing ONNX file, verified against torch, optionally quantized.

Needs the `[train]` extra (torch, onnx, onnxscript). The file's contract is in `picogpt.contract`.
"""
