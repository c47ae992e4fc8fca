"""The machine's own limits, measured in a few seconds: single-core memory bandwidth and fp32 GEMM rate.

From them, the floor of one decode step for a model file: the bytes it must stream per token
over the bandwidth, or its FLOPs over the GEMM peak, whichever is larger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

_PROBE = r"""
import json, time, numpy as np
src = np.ones(64 * 2**20 // 8)            # 64 MiB: far larger than the caches
dst = np.empty_like(src)
best = 1e9
for _ in range(7):
    t = time.perf_counter(); np.copyto(dst, src); best = min(best, time.perf_counter() - t)
bandwidth = 2 * src.nbytes / best          # read + write
a = np.random.rand(1024, 1024).astype(np.float32); b = np.random.rand(1024, 1024).astype(np.float32)
a @ b
best = 1e9
for _ in range(5):
    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
print(json.dumps({"bandwidth_gbs": bandwidth / 1e9, "gemm_gflops": 2 * 1024**3 / best / 1e9}))
"""


def measure_machine() -> dict:
    """Run the probe on one core in a fresh process (BLAS threads fixed before numpy loads)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout)
    result["probe_s"] = time.perf_counter() - t
    return result


def floor_ms(weight_bytes: float, flops_per_token: float, machine: dict) -> tuple[float, float]:
    """(memory floor, compute floor) in ms per token."""
    mem = weight_bytes / (machine["bandwidth_gbs"] * 1e9) * 1000
    comp = flops_per_token / (machine["gemm_gflops"] * 1e9) * 1000
    return mem, comp
