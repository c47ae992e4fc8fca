"""`picogpt-bench report`: docs/results.md and the README's Results table, rendered from docs/results/*.json.

The page is a pure function of the stored JSON (no clock, no machine probe), so a test can render it again
and compare it byte for byte with the committed page: a figure in the docs cannot drift from its data.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from picogpt.bench.quality import table_lines
from picogpt.bench.report import COLUMNS, cells
from picogpt.errors import PicoError
from picogpt.runtime.generator import BUNDLED_MODEL

README_BEGIN = "<!-- results: rendered by `picogpt-bench report` from docs/results/*.json -->"
README_END = "<!-- end of results -->"
TITLES = {"latency": "Decode speed: torch, ONNX Runtime and other engines", "quality": "Quality per CPU-minute",
          "score": "Scores of exported files", "train-speed": "Training speed: AdamW and Muon",
          "web-speed": "The browser page's speed"}


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def provenance(name: str | None, r: dict) -> list[str]:
    """The command, date, machine and versions of one result file (`name`: where it is stored, if it is)."""
    m, v = r["machine"], r["versions"]
    flags = ", ".join(m["flags"]) or "none of the listed ISA extensions"
    caches = ", ".join(f"{k} {s}" for k, s in m.get("caches", {}).items())
    return [f"`{r['command']}`", "",
            f"{r['date']} · {m['cpu']} · {m['logical_cores']} logical / {m['physical_cores']} physical cores · "
            f"{flags}" + (f" · {caches}" if caches else ""), "",
            "Versions: " + ", ".join(f"{k} {x}" for k, x in sorted(v.items()))
            + (f" · data: `docs/results/{name}`" if name else ""), ""]


def latency_section(name: str | None, r: dict) -> list[str]:
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in r["rows"]]
    roof = r.get("roofline")
    if roof:
        lines += ["", f"Roofline probe (1 core): {roof['bandwidth_gbs']:.1f} GB/s, {roof['gemm_gflops']:.0f} "
                      "GFLOP/s fp32 GEMM. p50 is the median time per generated token, sampling included; the "
                      "floor is the file's bytes over the bandwidth or its FLOPs over the GEMM rate."]
    if r.get("busy"):
        lines += ["", f"The machine was busy during the run ({r['busy']})."]
    return lines


def quality_section(name: str, r: dict) -> list[str]:
    return table_lines(r["rows"]) + ["", "val: mean cross-entropy (nats per character) of every character of the "
                                     "validation split, streamed in 1,280-character sequences with the context "
                                     "vector carried, and zeroed; (K): each new window re-reads K characters, as "
                                     "generation does; plain: none. The last column: the smallest gain of the "
                                     "carried vector over zeros on windows 2 and later, with its standard error."]


def score_section(name: str, r: dict) -> list[str]:
    lines = ["| file | quantization | val loss (overlap) | val loss (plain) | characters scored |",
             "|---|---|---|---|---|"]
    lines += [f"| `{row['file']}` | {row['quantization']} | {row['val_loss']:.4f} ({row.get('overlap', 0)}) | "
              f"{row.get('plain', row['val_loss']):.4f} | {row['targets']:,} |" for row in r["rows"]]
    return lines + ["", "Streamed through the runtime's decoder in 1,280-character sequences, context vector carried; "
                    "with the file's overlap each sequence first reads the characters before it, and each new window "
                    "re-reads them; plain: no overlap."]


def muon_cost(r: dict) -> tuple[float, float, float] | None:
    """Muon's tokens/s below AdamW's at the same tokens per step: (median, lowest round, highest round)."""
    by = {row["engine"]: row for row in r["rows"]}
    if "picogpt" not in by or "picogpt-muon" not in by:
        return None
    rounds = [1 - m / a for a, m in zip(by["picogpt"]["rounds_tok_s"], by["picogpt-muon"]["rounds_tok_s"])]
    return 1 - by["picogpt-muon"]["median_tok_s"] / by["picogpt"]["median_tok_s"], min(rounds), max(rounds)


def fewer_or_more(cost: float) -> str:
    return f"{cost:.1%} fewer" if cost >= 0 else f"{-cost:.1%} more"


def train_speed_section(name: str, r: dict) -> list[str]:
    s = r["setup"]
    lines = [f"{s['preset']} preset, batch {s['batch_size']} x {s['seq_windows']} windows, {s['threads']} threads.",
             "", "| engine | median tok/s | rounds (tok/s) |", "|---|---|---|"]
    lines += [f"| {row['engine']} | {row['median_tok_s']:,.0f} | "
              f"{', '.join(f'{x:,.0f}' for x in row['rounds_tok_s'])} |" for row in r["rows"]]
    cost = muon_cost(r)
    if cost:
        lines += ["", f"Muon: {fewer_or_more(cost[0])} tokens/s than AdamW at the same tokens per step "
                      f"(rounds: {cost[1]:.1%} to {cost[2]:.1%})."]
    return lines


def web_section(name: str, r: dict) -> list[str]:
    lines = ["| page load | ready ms | first token ms | greedy tokens/s (3 generations) |", "|---|---|---|---|"]
    lines += [f"| {i + 1} | {row['ready_ms']:.0f} | {row['first_token_ms']:.0f} | "
              f"{', '.join(f'{x:.0f}' for x in row['tokens_per_s'])} |" for i, row in enumerate(r["rows"])]
    lines += ["", f"Model `{r['model']}`, {r['tokens']} greedy tokens per generation, one WASM thread; times "
                  "after navigation start."]
    if r.get("parity"):
        p = r["parity"]
        lines += ["", f"Greedy text against native onnxruntime: {min(p['same'])}-{max(p['same'])} of {p['chars']} "
                      f"characters equal on {len(p['same'])} prompts."]
    return lines


SECTIONS = {"latency": latency_section, "quality": quality_section, "score": score_section,
            "train-speed": train_speed_section, "web-speed": web_section}


def plot_names(results: list[tuple[str, dict]]) -> dict[str, str]:
    """The PNG beside each result file that has a plot: file name -> plot name."""
    return {name: Path(name).with_suffix(".png").name for name, r in results
            if r["benchmark"] == "latency" or (r["benchmark"] == "quality" and all("curve" in x for x in r["rows"]))}


def write_plots(results: list[tuple[str, dict]], folder: Path) -> list[Path]:
    from picogpt.bench.quality import write_plot as quality_plot
    from picogpt.bench.report import write_plot as latency_plot

    plots = plot_names(results)
    for name, r in results:
        if name in plots:
            (latency_plot if r["benchmark"] == "latency" else quality_plot)(folder / plots[name], r["rows"])
    return [folder / p for p in plots.values()]


def render_page(results: list[tuple[str, dict]], plot_folder: str = "results") -> str:
    """docs/results.md: one section per kind of benchmark, one block per result file."""
    plots = plot_names(results)
    out = ["# Measured results", "",
           "Rendered by `picogpt-bench report` from the JSON in `docs/results/`; every figure below comes from "
           "one of those files, which holds the exact command, the date, the machine and the package versions. "
           "To measure again, run a section's command on your machine (it writes the JSON), then "
           "`picogpt-bench report`.", ""]
    for kind in SECTIONS:
        files = [(n, r) for n, r in results if r["benchmark"] == kind]
        if not files:
            continue
        out += [f"## {TITLES[kind]}", ""]
        for name, r in files:
            out += provenance(name, r) + SECTIONS[kind](name, r) + [""]
            if name in plots:
                out += [f"![{TITLES[kind]}]({plot_folder}/{plots[name]})", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def headline(results: list[tuple[str, dict]]) -> list[tuple[str, str, dict]]:
    """(what, figure, the result it comes from) for the README's short table."""
    rows = []
    for _, r in sorted(results, key=lambda nr: list(SECTIONS).index(nr[1]["benchmark"])):  # stable: names within
        kind, data = r["benchmark"], r["rows"]
        if kind == "latency":
            t = min(row["threads"] for row in data)
            ort = min((x for x in data if x["threads"] == t and x["engine"].startswith("ort")),
                      key=lambda x: x["p50_ms"], default=None)
            if ort and ort.get("x_torch-kv"):
                rows.append(("Decode speed against torch", f"{ort['engine']} {ort['p50_ms']:.3f} ms/token (median): "
                             f"{ort['x_torch-kv']:.1f}x torch with a KV cache, {ort['x_torch-naive']:.0f}x torch "
                             f"without ({t} thread)", r))
            peers = [x for x in data if x["threads"] == t and x["engine"].startswith("llama")]
            if ort and peers:
                peer = min(peers, key=lambda x: x["p50_ms"])
                rows.append(("Decode speed against llama.cpp", f"{ort['engine']} {ort['p50_ms']:.3f} ms/token, "
                             f"{peer['engine']} {peer['p50_ms']:.3f} ({peer['p50_ms'] / ort['p50_ms']:.2f}x)", r))
        elif kind == "quality":
            for minutes in sorted({x["minutes"] for x in data}):
                best = min((x for x in data if x["minutes"] == minutes), key=lambda x: x["val_loss"])
                steps = f"{best['steps']:,} step" + ("s" if best["steps"] != 1 else "")
                rows.append((f"Quality after {minutes:g} CPU-minutes", f"val loss {best['val_loss']:.4f} with "
                             f"overlap {best.get('overlap', 0)}, {best.get('plain', best['val_loss']):.4f} plain "
                             f"({best['recipe']}, {best['preset']}, {steps})", r))
        elif kind == "score":
            rows += [("The bundled model's score" if Path(x["file"]).name == BUNDLED_MODEL else
                      f"Score of `{Path(x['file']).name}`", f"val loss {x['val_loss']:.4f} with overlap "
                      f"{x.get('overlap', 0)} ({x.get('plain', x['val_loss']):.4f} plain) on {x['targets']:,} "
                      "characters", r) for x in data]
        elif kind == "train-speed" and muon_cost(r):
            rows.append(("Muon's cost per step", f"{fewer_or_more(muon_cost(r)[0])} tokens/s than AdamW "
                         f"({r['setup']['preset']}, batch {r['setup']['batch_size']} x {r['setup']['seq_windows']})",
                         r))
        elif kind == "web-speed":
            warm = statistics.median(x for row in data for x in row["tokens_per_s"][1:])
            first = statistics.median(row["first_token_ms"] for row in data)
            rows.append(("Browser page (one WASM thread)", f"{warm:,.0f} tokens/s warm, first token "
                         f"{first / 1000:.2f} s after navigation", r))
    return rows


def render_readme_table(results: list[tuple[str, dict]]) -> str:
    lines = [README_BEGIN, "", "| result | figure | command | date, CPU |", "|---|---|---|---|"]
    for what, figure, r in headline(results):
        link = f"[{what}](docs/results.md#{anchor(TITLES[r['benchmark']])})"
        lines.append(f"| {link} | {figure} | `{r['command']}` | {r['date']}, {r['machine']['cpu']} |")
    return "\n".join([*lines, "", README_END])


def replace_readme_table(readme: str, table: str) -> str:
    """The README with its results block replaced by `table`."""
    if README_BEGIN not in readme or README_END not in readme:
        raise PicoError(f"the README has no results block ({README_BEGIN!r} ... {README_END!r})")
    head, rest = readme.split(README_BEGIN, 1)
    return head + table + rest.split(README_END, 1)[1]
