"""The machine's own limits, measured in a few seconds on one core: copy bandwidth out of L2, L3 and DRAM,
and the fp32 (numpy GEMM) and int8 (onnxruntime MatMulInteger) multiply rates.

From them, two floors for one decode step: the bytes it reads (weights + KV cache) over the bandwidth of
the level they fit in (a 7 MB int8 model stays in a 32 MB L3 from one token to the next, it is not
streamed from DRAM), and its multiply-adds over the rate of the arithmetic it uses. The larger floor
names the bound the engine is nearest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from picogpt.bench.system_info import cache_sizes

_PROBE = r"""
import json, sys, time, numpy as np
bw = {}
for level, nbytes in json.loads(sys.argv[1]).items():
    src = np.ones(max(nbytes // 16, 1024)); dst = np.empty_like(src)  # source + destination = nbytes
    reps = max(3, int(4e8 // (2 * src.nbytes)))
    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            np.copyto(dst, src)
        best = min(best, (time.perf_counter() - t) / reps)
    bw[level] = 2 * src.nbytes / best / 1e9  # read + write
a = np.random.rand(1024, 1024).astype(np.float32); b = np.random.rand(1024, 1024).astype(np.float32)
a @ b
best = 1e9
for _ in range(5):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
fp32 = 2 * 1024**3 / best / 1e9
# int8: onnxruntime's MatMulInteger (u8 x s8, MLAS), the graph written as bytes (the base install has no onnx)
import onnxruntime as ort
from picogpt.runtime.webgraph import ld, node, tensor_info, varint
n = 1024
graph = (ld(1, node("MatMulInteger", ["a", "b"], ["y"], "mm")) + ld(2, b"int8_rate")
         + ld(11, tensor_info("a", 2, [n, n])) + ld(11, tensor_info("b", 3, [n, n]))
         + ld(12, tensor_info("y", 6, [n, n])))
model = varint(1 << 3) + varint(8) + ld(8, varint(2 << 3) + varint(13)) + ld(7, graph)
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
x = np.random.randint(0, 255, (n, n), dtype=np.uint8); w = np.random.randint(-127, 127, (n, n), dtype=np.int8)
s.run(None, {"a": x, "b": w})
best = 1e9
for _ in range(5):
    t = time.perf_counter(); s.run(None, {"a": x, "b": w}); best = min(best, time.perf_counter() - t)
print(json.dumps({"bandwidth": bw, "gemm_gflops": fp32, "int8_gops": 2 * n**3 / best / 1e9}))
"""


def _bytes(size: str) -> int | None:
    """'2048K' / '32768K' / '2 MiB' (sysfs) -> bytes."""
    size = size.replace("iB", "").replace(" ", "").upper()
    unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
    try:
        return int(float(size.rstrip("KMG")) * unit)
    except ValueError:
        return None


def levels() -> dict[str, int]:
    """Bytes per cache level this core can hold (L2, L3 as sysfs reports them; defaults if unknown)."""
    found = {k: _bytes(v) for k, v in cache_sizes().items() if k in ("L2", "L3")}
    return {"L2": found.get("L2") or 2**20, "L3": found.get("L3") or 8 * 2**20}


def measure_machine() -> dict:
    """Run the probe on one core in a fresh process (BLAS threads fixed before numpy loads)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    caches = levels()
    # each working set half its level (the rest of the machine uses it too); DRAM: 4x the L3, at least 64 MiB
    sizes = {"L2": caches["L2"] // 2, "L3": caches["L3"] // 2, "DRAM": max(4 * caches["L3"], 64 * 2**20)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(sizes)], capture_output=True, text=True,
                         env=env, check=True)
    result = json.loads(out.stdout)
    result["bandwidth_gbs"] = result["bandwidth"]["DRAM"]
    result["caches"] = caches
    result["probe_s"] = time.perf_counter() - t
    return result


def level_of(nbytes: float, machine: dict) -> str:
    """The smallest level a working set of `nbytes` fits in, so stays in between tokens."""
    caches = machine["caches"]
    return "L2" if nbytes <= caches["L2"] else "L3" if nbytes <= caches["L3"] else "DRAM"


def floor_ms(read_bytes: float, flops: float, machine: dict, int8: bool) -> tuple[float, float, str]:
    """(memory floor, compute floor) in ms per token, and the level the bytes are read from."""
    level = level_of(read_bytes, machine)
    mem = read_bytes / (machine["bandwidth"][level] * 1e9) * 1000
    comp = flops / ((machine["int8_gops"] if int8 else machine["gemm_gflops"]) * 1e9) * 1000
    return mem, comp, level
