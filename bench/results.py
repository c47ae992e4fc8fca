"""The JSON every benchmark writes: its rows plus what they were measured on, so a page can be rendered from it.

One file per command, e.g. `docs/results/latency.json`:

    {"schema": 1, "benchmark": "latency", "command": "picogpt-bench runs/pretrained/ckpt.pt --json ...",
     "date": "YYYY-MM-DD", "machine": {"cpu", "flags", "logical_cores", "physical_cores", "caches"},
     "versions": {"picogpt", "python", "numpy", "onnxruntime", "torch", ...}, "rows": [...], ...}

`picogpt-bench report` renders docs/results.md from these files alone.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from picogpt.errors import PicoError
from picogpt.paths import MARKER_KEY, write_atomic

SCHEMA = 1
BENCHMARKS = ("latency", "quality", "score", "train-speed", "web-speed")
REQUIRED = ("schema", "benchmark", "command", "date", "machine", "versions", "rows")
PACKAGES = ("picogpt", "numpy", "onnxruntime", "torch", "onnx", "playwright")


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Python and the installed packages that take part (read from their metadata: nothing is imported)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {**found, **(extra or {})}


def machine() -> dict:
    """The CPU as lscpu names it, the instruction-set flags that matter here, cores and caches."""
    from picogpt.bench.system_info import machine_report
    from picogpt.system import physical_cores

    info = machine_report()
    return {"cpu": info["cpu"], "flags": [f for f, on in info["isa"].items() if on],
            "logical_cores": os.cpu_count() or 1, "physical_cores": physical_cores(), "caches": info["caches"]}


def command_line(program: str, argv: list[str] | None = None) -> str:
    """The command as a user would type it again: paths under the current folder relative, the home folder as ~."""
    cwd, home = Path.cwd(), Path.home()
    args = []
    for arg in sys.argv[1:] if argv is None else argv:
        p = Path(arg)
        if p.is_absolute():
            if p.is_relative_to(cwd):
                arg = str(p.relative_to(cwd)) or "."
            elif p.is_relative_to(home):
                arg = "~/" + str(p.relative_to(home))
        args.append(arg)
    env = "PICOGPT_DATA=... " if os.environ.get("PICOGPT_DATA") else ""
    return env + shlex.join([*program.split(), *args])


def envelope(benchmark: str, program: str, rows: list, extra_versions: dict[str, str] | None = None,
             **fields) -> dict:
    """A result file's content: the rows and where, when and how they were measured."""
    assert benchmark in BENCHMARKS, benchmark
    return {"schema": SCHEMA, "benchmark": benchmark, "command": command_line(program),
            "date": datetime.date.today().isoformat(), "machine": machine(),
            "versions": versions(extra_versions), **fields, "rows": rows}


def write_result(path: Path | None, result: dict) -> None:
    """Write a result file atomically, marked as picogpt's (so a later run may replace it, and nothing else)."""
    if path is not None:
        write_atomic(path, json.dumps({MARKER_KEY: "picogpt-bench", **result}, indent=2,
                                      sort_keys=True) + "\n", "--json")


def load_results(folder: Path) -> list[tuple[str, dict]]:
    """(file name, content) of every result file in `folder`, checked, in name order."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise PicoError(f"no result files (*.json) in {folder}")
    results = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise PicoError(f"{f}: not a readable JSON file ({exc})") from None
        missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
        if missing:
            raise PicoError(f"{f}: not a benchmark result (missing {', '.join(missing)}); write it with --json")
        if data["schema"] != SCHEMA or data["benchmark"] not in BENCHMARKS:
            raise PicoError(f"{f}: schema {data['schema']} / benchmark {data['benchmark']!r} is not one this "
                            f"picogpt renders ({', '.join(BENCHMARKS)})")
        results.append((f.name, data))
    return results
