"""Tables (rich or plain), markdown, PNG bars, and the per-token cost model for the roofline."""

from __future__ import annotations

from pathlib import Path

from picogpt.paths import save_figure

COLUMNS = [("engine", "engine", "{}"), ("threads", "thr", "{}"), ("size_mb", "size MB", "{:.1f}"),
           ("load_s", "load s", "{:.2f}"), ("prefill_ms", "prefill ms", "{:.1f}"), ("p50_ms", "p50 ms", "{:.3f}"),
           ("p50_range", "p50 min-max", "{}"), ("p90_ms", "p90 ms", "{:.3f}"), ("p99_ms", "p99 ms", "{:.3f}"),
           ("tokens_per_s", "tok/s", "{:,.0f}"), ("overlap", "overlap", "{}"),
           ("overlap_share", "in overlap", "{:.1%}"),
           ("peak_rss_mb", "RSS MB", "{:.0f}"),
           ("x_torch-naive", "x naive", "{:.1f}"), ("x_torch-kv", "x torch-kv", "{:.1f}"),
           ("floor_ms", "floor ms", "{:.3f}"), ("vs_floor", "/floor", "{:.1f}"), ("bound", "floor by", "{}")]


def model_costs(engine: str, path: Path) -> tuple[float, float]:
    """(bytes streamed per token, FLOPs per token) for one engine's step."""
    if engine.startswith("torch"):
        from picogpt.checkpoint import read_checkpoint

        cfg = read_checkpoint(path).model.config
        weight_bytes = cfg.num_params(include_positions=True) * 4
    else:
        from picogpt.runtime.decoder import OnnxDecoder

        cfg = OnnxDecoder(path).config
        weight_bytes = path.stat().st_size
    cache_bytes = 2 * cfg.n_layer * cfg.n_positions * cfg.n_embd * 4
    attn_flops = 4 * cfg.n_layer * cfg.n_positions * cfg.n_embd
    flops = 2 * cfg.num_params() + attn_flops
    if engine == "torch-naive":  # 1,280 positions recomputed per token; the weights are still read once
        from picogpt.windows import STREAM_WINDOWS

        positions = STREAM_WINDOWS * cfg.context_len
        return weight_bytes, flops * positions + attn_flops * cfg.n_positions * STREAM_WINDOWS
    return weight_bytes + cache_bytes, flops


def cells(row: dict) -> list[str]:
    row = {**row, "p50_range": f"{row['p50_min']:.3f}-{row['p50_max']:.3f}"}
    out = []
    for key, _, fmt in COLUMNS:
        v = row.get(key)
        out.append("-" if v is None else fmt.format(v))
    return out


def print_table(rows: list[dict]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("  ".join(h for _, h, _ in COLUMNS))
        for r in rows:
            print("  ".join(cells(r)))
        return
    table = Table(title="PicoGPT generation latency (medians over rounds; batch 1, sampling included)")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(*cells(r))
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=220)
    console.print(table)


def write_plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['engine']}\n{r['threads']} thr" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 1.1), 4), dpi=100)
    ax.bar(labels, [r["p50_ms"] for r in rows], color="#4c72b0", label="p50 ms/token")
    ax.scatter(labels, [r["floor_ms"] for r in rows], color="#c44e52", marker="_", s=600, label="roofline floor")
    ax.set_yscale("log")
    ax.set_ylabel("ms per token (log)")
    ax.set_title("PicoGPT decode latency per engine")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, "picogpt-bench")
    plt.close(fig)
