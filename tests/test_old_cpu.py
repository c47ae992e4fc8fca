"""The torch-free runtime on a CPU without AVX (x86-64-v2, a 2010 Core i3), emulated by qemu-user: the CPU is
detected as the process sees it, the int8 file loads with its u8 weight codes, and its greedy text is the one
the exporter recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import require

QEMU = shutil.which("qemu-x86_64")
OLD_CPU = "Westmere"  # SSE4.2 and POPCNT, no AVX: what numpy >= 2.4 needs and no more


def on_old_cpu(*args: str) -> subprocess.CompletedProcess:
    if QEMU is None:
        require("qemu-x86_64 is not installed (Debian: qemu-user)", "CI_REQUIRE_QEMU")
    # OpenBLAS told to assume a newer core would run instructions a Westmere does not have
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return subprocess.run([QEMU, "-cpu", OLD_CPU, sys.executable, *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_the_old_cpu_is_seen_as_the_process_sees_it() -> None:
    proc = on_old_cpu("-c", "from picogpt.system import has_vnni, numpy_cpu_features as f; "
                            "print(has_vnni(), f()['AVX'])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]  # the host's /proc/cpuinfo lists AVX and maybe VNNI


def test_the_bundled_model_verifies_and_generates_on_an_old_cpu() -> None:
    proc = on_old_cpu("-m", "picogpt.runtime", "--verify")
    assert proc.returncode == 0 and "fingerprint OK" in proc.stdout, proc.stdout + proc.stderr
    proc = on_old_cpu("-m", "picogpt.runtime", "--prompt", "ROMEO:", "--max-new-tokens", "150", "--seed", "0",
                      "--threads", "1", "--stats")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout) > 150 and "tokens/s" in proc.stderr
