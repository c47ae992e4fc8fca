"""docs/results.md and the README's Results table are what `picogpt-bench report` renders from docs/results/*.json."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from picogpt.bench.results import REQUIRED, load_results
from picogpt.bench.results_page import render_page, render_readme_table, replace_readme_table

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"


def test_the_committed_page_is_what_the_stored_json_renders() -> None:
    results = load_results(RESULTS)
    assert (REPO / "docs" / "results.md").read_text() == render_page(results)
    readme = (REPO / "README.md").read_text()
    assert readme == replace_readme_table(readme, render_readme_table(results))


def test_every_stored_result_says_how_it_was_measured() -> None:
    for name, r in load_results(RESULTS):
        assert all(r[k] for k in REQUIRED), name
        assert r["machine"]["cpu"] and r["machine"]["logical_cores"] >= 1 and r["versions"]["python"], name
        assert r["command"].split()[0] in ("picogpt-bench", "python", "PICOGPT_DATA=..."), name
        assert not re.search(r"/wor[k]/|/hom[e]/", json.dumps(r)), name  # no development machine's paths


def test_report_regenerates_the_page_readme_and_plots(tmp_path: Path) -> None:
    shutil.copytree(RESULTS, tmp_path / "results", ignore=shutil.ignore_patterns("*.png"))
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    out = tmp_path / "results.md"
    proc = run_cli("picogpt.bench", "report", "--results", str(tmp_path / "results"), "--out", str(out),
                   "--readme", str(readme))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == (REPO / "docs" / "results.md").read_text()
    assert readme.read_text() == (REPO / "README.md").read_text()
    pngs = sorted(p.name for p in (tmp_path / "results").glob("*.png"))
    assert pngs and all(f"results/{p}" in out.read_text() for p in pngs)


def test_a_changed_figure_changes_the_page(tmp_path: Path) -> None:
    results = load_results(RESULTS)
    name, first = results[0]
    changed = json.loads(json.dumps(first))
    changed["date"] = "1999-01-01"
    assert render_page([(name, changed), *results[1:]]) != render_page(results)


def test_report_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text(json.dumps([{"engine": "ort-int8"}]))  # rows without their provenance
    readme = tmp_path / "README.md"
    readme.write_text("# no results block\n")
    args = ["--results", str(tmp_path), "--out", str(tmp_path / "r.md"), "--readme", str(readme)]
    assert_one_line_error(run_cli("picogpt.bench", "report", *args), "not a benchmark result")
    shutil.copy(RESULTS / sorted(p.name for p in RESULTS.glob("*.json"))[0], tmp_path / "old.json")
    assert_one_line_error(run_cli("picogpt.bench", "report", *args), "no results block")
    assert_one_line_error(run_cli("picogpt.bench", "report", "--results", str(tmp_path / "none")), "no result files")


@pytest.mark.parametrize("kind", ["latency", "quality", "score", "train-speed", "web-speed"])
def test_each_kind_of_benchmark_is_stored(kind: str) -> None:
    assert kind in {r["benchmark"] for _, r in load_results(RESULTS)}
