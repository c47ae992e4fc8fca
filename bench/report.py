"""Tables (rich or plain), markdown, PNG bars, and the per-token cost model for the roofline."""

from __future__ import annotations

from pathlib import Path

from picogpt.paths import save_figure

COLUMNS = [("engine", "engine", "{}"), ("threads", "thr", "{}"), ("threads_used", "used", "{}"),
           ("batch", "batch", "{}"),
           ("size_mb", "size MB", "{:.1f}"), ("load_s", "load s", "{:.2f}"), ("prefill_ms", "prefill ms", "{:.1f}"),
           ("p50_ms", "p50 ms", "{:.3f}"), ("p50_range", "p50 min-max", "{}"), ("p90_ms", "p90 ms", "{:.3f}"),
           ("p99_ms", "p99 ms", "{:.3f}"), ("tokens_per_s", "tok/s", "{:,.0f}"), ("overlap", "overlap", "{}"),
           ("overlap_share", "in overlap", "{:.1%}"), ("peak_rss_mb", "RSS MB", "{:.0f}"),
           ("x_torch-naive", "x naive", "{:.1f}"), ("x_torch-kv", "x torch-kv", "{:.1f}"),
           ("floor_ms", "floor ms", "{:.3f}"), ("vs_floor", "/floor", "{:.1f}"), ("bound", "nearest bound", "{}")]
# Engines whose products run in int8 (llama.cpp's Q8_0/Q4_0 dot products quantize activations to 8 bits,
# MatMulNBits at accuracy level 4 too); the others multiply in fp32.
INT8_ENGINES = ("ort-int8", "ort-int4", "ort-int4-gptq", "ort-int8-block", "llamacpp-q8_0", "llamacpp-q4_0")


def model_costs(engine: str, path: Path) -> tuple[float, float, float]:
    """(weight bytes, a full window's KV cache bytes per stream, FLOPs per token) of one engine's step."""
    if engine.startswith("torch"):
        from picogpt.checkpoint import read_checkpoint

        cfg = read_checkpoint(path).model.config
        weight_bytes = cfg.num_params(include_positions=True) * 4
    elif engine.startswith("llamacpp"):
        from picogpt.bench.llamacpp import gguf_config

        cfg = gguf_config(path)
        weight_bytes = path.stat().st_size
    else:
        from picogpt.runtime.decoder import OnnxDecoder

        cfg = OnnxDecoder(path).config
        weight_bytes = path.stat().st_size
    # llama.cpp's cache is f16 by default, ours fp32
    cache_bytes = 2 * cfg.n_layer * cfg.n_positions * cfg.n_embd * (2 if engine.startswith("llamacpp") else 4)
    attn_flops = 4 * cfg.n_layer * cfg.n_positions * cfg.n_embd
    flops = 2 * cfg.num_params() + attn_flops
    if engine == "torch-naive":  # 1,280 positions recomputed per token; the weights are still read once
        from picogpt.windows import STREAM_WINDOWS

        positions = STREAM_WINDOWS * cfg.context_len
        return weight_bytes, cache_bytes, flops * positions + attn_flops * cfg.n_positions * STREAM_WINDOWS
    return weight_bytes, cache_bytes, flops


def roofline_text(machine: dict) -> str:
    bw = ", ".join(f"{k} {v:.0f}" for k, v in machine["bandwidth"].items())
    return (f"copy bandwidth GB/s {bw}; fp32 GEMM {machine['gemm_gflops']:.0f} GFLOP/s, "
            f"int8 {machine['int8_gops']:.0f} GOP/s")


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
    table = Table(title="PicoGPT generation latency (medians over rounds; sampling included; tok/s = batch x "
                        "tokens / s)")
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

    labels = [f"{r['engine']}\n{r['threads']} thr b{r.get('batch', 1)}" for r in rows]
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
