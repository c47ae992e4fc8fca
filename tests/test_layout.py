"""The code's layout: each stage imports only from the stages listed before it (README, "How the code is laid out").

Every `import` is read with `ast`, those inside functions included, so a lazy import that points back
counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Folders on disk -> the package they install as (setup.cfg's package_dir).
PACKAGES = {"picogpt": "picogpt", "export": "picogpt.export", "runtime": "picogpt.runtime", "bench": "picogpt.bench"}
# Stages in dependency order: (name, module prefixes). A module belongs to the stage of its longest prefix.
STAGES = [
    ("core", ["picogpt"]),
    ("data", ["picogpt.data"]),
    ("runtime", ["picogpt.runtime"]),
    ("model", ["picogpt.model", "picogpt.checkpoint"]),
    ("train", ["picogpt.train"]),
    ("export", ["picogpt.export"]),
    ("bench", ["picogpt.bench"]),
]


def stage_of(module: str) -> int:
    best, rank = -1, 0
    for i, (_, prefixes) in enumerate(STAGES):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str) -> set[str]:
    """Every picogpt module a source file imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m == "picogpt" or m.startswith("picogpt.")}


def backward_imports(sources: dict[str, str]) -> list[str]:
    """`module -> imported` for each import of a later stage than the importing module's own."""
    arrows = []
    for module, source in sorted(sources.items()):
        for target in sorted(imported(source)):
            if stage_of(target) > stage_of(module):
                arrows.append(f"{module} ({STAGES[stage_of(module)][0]}) -> {target} ({STAGES[stage_of(target)][0]})")
    return arrows


def project_sources() -> dict[str, str]:
    return {module_name(f): f.read_text() for folder in PACKAGES for f in (REPO / folder).rglob("*.py")}


def test_imports_only_point_back_to_earlier_stages() -> None:
    sources = project_sources()
    assert len(sources) > 40 and "picogpt.runtime.decoder" in sources and "picogpt.export.verify" in sources
    assert backward_imports(sources) == []


def test_a_planted_backward_import_is_caught() -> None:
    sources = project_sources()
    decoder = sources["picogpt.runtime.decoder"]
    planted = {**sources, "picogpt.runtime.decoder": decoder + "\n\ndef f():\n    from picogpt.export import verify\n"}
    assert backward_imports(planted) == ["picogpt.runtime.decoder (runtime) -> picogpt.export (export)"]
    core = {"picogpt.windows": "import picogpt.train.loop\n"}
    assert backward_imports(core) == ["picogpt.windows (core) -> picogpt.train.loop (train)"]


def test_every_module_belongs_to_a_stage_listed_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## How the code is laid out", 1)[1]
    order = [layout.index(f"`{folder}") for folder in ("picogpt/`", "picogpt/data/", "runtime/", "picogpt/model.py",
                                                        "picogpt/train/", "export/", "bench/")]
    assert order == sorted(order), "the README lists the stages in another order than STAGES"
