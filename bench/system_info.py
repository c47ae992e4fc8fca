"""What machine the figures come from, and whether anything else is competing for it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from picogpt.system import cpu_flags, cpu_model, physical_cores

ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cache_sizes() -> dict[str, str]:
    sizes = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + ({"Data": "d", "Instruction": "i"}.get(kind, ""))
        sizes[name] = size
    return sizes


def machine_report() -> dict:
    flags = cpu_flags()
    isa = {f: f in flags for f in ISA}
    caches = cache_sizes()
    text = (f"CPU: {cpu_model()} | {os.cpu_count()} logical / {physical_cores()} physical cores | "
            f"ISA: {', '.join(f for f, on in isa.items() if on) or 'none of ' + '/'.join(ISA)} | "
            f"caches: {', '.join(f'{k} {v}' for k, v in caches.items()) or 'unknown'}")
    return {"cpu": cpu_model(), "isa": isa, "caches": caches, "text": text}


def running_now() -> int:
    """Runnable processes on the machine right now (this one included), from /proc/stat."""
    try:
        return int(next(ln.split()[1] for ln in Path("/proc/stat").read_text().splitlines()
                        if ln.startswith("procs_running")))
    except (OSError, StopIteration, ValueError):
        return 1


def busy_report(use_load: bool = True, samples: int = 10, interval: float = 0.05) -> str:
    """Non-empty when other processes are running: OpenMP spinning then wrecks 2-thread torch figures.

    A neighbour counts when it is runnable in every one of `samples` looks `interval` s apart: one look
    also catches short blips (a `ps`, a kernel worker) and marked quiet runs busy. `use_load=False` ignores
    the load average (right after our own previous run it is still high)."""
    others = []
    for i in range(samples):
        if i:
            time.sleep(interval)
        others.append(running_now() - 1)  # - this process
    steady = min(others)
    load1 = os.getloadavg()[0]
    if steady >= 1 or (use_load and load1 > 0.7):
        return f"load average {load1:.2f}, {steady} other runnable process(es)"
    return ""
