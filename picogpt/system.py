"""Small facts about the machine (torch-free): physical cores, CPU model and ISA flags."""

from __future__ import annotations

import os
from pathlib import Path

from picogpt.errors import PicoError, check_type


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads counted once; at least 1)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = set()
    phys = core = None
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip() and core is not None:
            cores.add((phys, core))
            phys = core = None
    if core is not None:
        cores.add((phys, core))
    return max(1, min(usable, len(cores) or usable))


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI: without either, signed int8 weights saturate in ORT's kernels.

    numpy's own CPUID check comes first: it is what this process can run, where /proc/cpuinfo may describe
    another CPU (an emulator such as `qemu-x86_64 -cpu Westmere` shows the host's flags there)."""
    seen = numpy_cpu_features()
    if seen.get("AVX512VNNI"):
        return True
    if seen and not seen.get("AVX2"):
        return False  # no AVX2 means no AVX-VNNI either, whatever /proc/cpuinfo says
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def numpy_cpu_features() -> dict[str, bool]:
    """The CPU features numpy detected at import ({} where this numpy does not say)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def max_threads() -> int:
    """The most threads any command accepts: 4 per logical CPU (more only thrashes)."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    """Refuse thread counts below 1 or above `max_threads()` (or not a whole number) with one line."""
    check_type(threads, flag, "int", allow_none=True)
    if threads is not None and not 1 <= threads <= max_threads():
        raise PicoError(f"{flag} must be between 1 and {max_threads()} (4 per CPU here), got {threads}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(needed: int, what: str, flag: str) -> None:
    """Refuse a request whose estimated memory exceeds what this machine has available."""
    free = available_memory()
    if free is not None and needed > 0.9 * free:
        raise PicoError(f"{flag}: {what} needs about {needed / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is "
                        "available here; lower it")
