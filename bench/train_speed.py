"""`python -m picogpt.bench.train_speed`: training tokens/s of picogpt-train vs a nanoGPT step.

The nanoGPT baseline is the same Block code run the way nanoGPT's train.py runs it on a CPU:
one 128-character window per row, `nn.Linear` (addmm), AdamW without the fused kernel, and
glibc's default allocator settings. The picogpt engines pick their matmul library as picogpt-train does;
`picogpt-muon:blas` or `:onednn` forces one (`--matmul`). Each engine runs in its own process, interleaved A B A B,
and the medians of the rounds are compared.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click

from picogpt.errors import PicoError, cli_errors, one_line_usage


def _measure(engine: str, preset: str, batch_size: int, seq_windows: int, threads: int, steps: int,
             warmup: int) -> float:
    """Run in a fresh process: tokens/s of `steps` training steps after `warmup`."""
    import torch
    import torch.nn as nn

    from picogpt.model import GPT, Linear
    from picogpt.train.optim import make_optimizer
    from picogpt.train.presets import PRESETS

    engine, _, matmul = engine.partition(":")  # picogpt-muon:blas times it on BLAS, as --matmul blas trains
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = PRESETS[preset].config()
    model = GPT(cfg)
    n = seq_windows * cfg.context_len
    idx = torch.randint(0, cfg.vocab_size, (batch_size, n))
    tgt = torch.randint(0, cfg.vocab_size, (batch_size, n))
    if engine == "nanogpt":
        for m in model.modules():
            if type(m) is Linear:
                m.__class__ = nn.Linear  # nanoGPT's plain addmm linears
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=False)

        def loss_fn() -> torch.Tensor:
            hidden, _ = model.run_blocks(model.transformer.wte(idx), 0)
            logits = model.lm_head(hidden)
            return nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
    else:
        from picogpt.train.malloc import keep_heap_memory
        from picogpt.train.matmul import choose, use_kernel
        from picogpt.train.runner import StepRunner

        keep_heap_memory()
        torch.set_num_threads(1)  # threads become data-parallel workers, as picogpt-train does
        chosen = choose(matmul or "auto", cfg, batch_size // threads * seq_windows * cfg.context_len)
        use_kernel(model, chosen.linear)
        runner = StepRunner(model, threads)
        name = "muon" if engine == "picogpt-muon" else "adamw"
        optimizer = make_optimizer(model, name, 1e-3, 0.1, (0.9, 0.99), executor=runner.pool, workers=threads,
                                   products=chosen.products)

        def loss_fn() -> torch.Tensor:
            runner(idx, tgt)
            return torch.zeros((), requires_grad=True)  # gradients are already in .grad

    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch_size * n / statistics.median(times)


def newton_schulz_cost(preset: str, threads: int, repeats: int = 10) -> tuple[float, float]:
    """ms for Muon's orthogonalisation of one step's hidden matrices, and for its floor: the two products any
    orthogonalisation needs once (the Gram matrix G = X X^T and the product Q X), with no iteration at all."""
    import torch

    from picogpt.model import GPT
    from picogpt.train.optim import orthogonalize
    from picogpt.train.presets import PRESETS

    torch.set_num_threads(threads)
    model = GPT(PRESETS[preset].config())
    shapes: dict[torch.Size, int] = {}
    for name, p in model.named_parameters():
        if p.dim() == 2 and ".h." in f".{name}":  # the matrices Muon takes (train/optim.py)
            shapes[p.shape] = shapes.get(p.shape, 0) + 1
    stacks = [torch.randn(n, *shape) for shape, n in shapes.items()]

    def floor(g: torch.Tensor) -> torch.Tensor:
        x = g.mT if g.size(-2) > g.size(-1) else g
        return (x @ x.mT) @ x

    def ms(fn) -> float:
        for s in stacks:
            fn(s)
        t = time.perf_counter()
        for _ in range(repeats):
            for s in stacks:
                fn(s)
        return (time.perf_counter() - t) / repeats * 1000

    return ms(orthogonalize), ms(floor)


ENGINES = ["nanogpt", "picogpt", "picogpt-muon"]
# picogpt engines on a forced matmul library (picogpt-train's --matmul); without a suffix they choose as it does
FORCED = [f"{e}:{k}" for e in ENGINES[1:] for k in ("blas", "onednn")]


@click.command(cls=one_line_usage(click.Command))
@click.option("--batch-size", default=12, show_default=True)
@click.option("--seq-windows", default=10, show_default=True, help="Windows per sequence (picogpt engines).")
@click.option("--model", "preset", default="base", show_default=True, help="Model preset.")
@click.option("--threads", default=2, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--tokens", default=60_000, show_default=True, help="Tokens timed per engine per round.")
@click.option("--engines", default=",".join(ENGINES), show_default=True)
@click.option("--engine", type=click.Choice(ENGINES + FORCED), default=None, hidden=True)
@click.option("--newton-schulz", "ns", is_flag=True,
              help="Only time Muon's Newton-Schulz for the preset's matrices, and the floor any orthogonalisation has.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the rounds, the medians and the machine as a result file (picogpt-bench report).")
@cli_errors
def main(batch_size: int, seq_windows: int, preset: str, threads: int, rounds: int, tokens: int, engines: str,
         engine: str | None, ns: bool, json_path: Path | None) -> None:
    """Compare training throughput (tokens/s), each engine in its own process, interleaved."""
    if ns:
        full, floor = newton_schulz_cost(preset, threads)
        print(f"{preset}, {threads} threads: Newton-Schulz {full:.1f} ms a step; "
              f"the products G = X X^T and Q X alone {floor:.1f} ms")
        return
    if engine:  # child process
        windows = 1 if engine == "nanogpt" else seq_windows
        steps = max(3, tokens // (batch_size * 128 * windows))
        tok_s = _measure(engine, preset, batch_size, windows, threads, steps, warmup=max(2, steps // 3))
        print(json.dumps({"tok_s": tok_s}))
        return
    results: dict[str, list[float]] = {name: [] for name in engines.split(",")}
    unknown = [name for name in results if name not in ENGINES + FORCED]
    if unknown:
        raise PicoError(f"--engines: unknown engine {unknown[0]!r} (choose from {', '.join(ENGINES + FORCED)})")
    for r in range(rounds):
        for name in results:
            out = subprocess.run([sys.executable, "-m", "picogpt.bench.train_speed", "--engine", name,
                                  "--batch-size", str(batch_size), "--seq-windows", str(seq_windows), "--model",
                                  preset, "--threads", str(threads), "--tokens", str(tokens)],
                                 capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1])["tok_s"])
            print(f"round {r + 1}: {name:12s} {results[name][-1]:8,.0f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    if "picogpt" in med and "picogpt-muon" in med:  # Muon's extra work per step, as a measurement
        rounds_cost = [1 - m / a for a, m in zip(results["picogpt"], results["picogpt-muon"])]
        cost = 1 - med["picogpt-muon"] / med["picogpt"]
        print(f"Muon: {cost:.1%} fewer tok/s than AdamW at the same tokens per step (rounds "
              f"{min(rounds_cost):.1%} to {max(rounds_cost):.1%})")
    print(f"median tok/s, {preset}, batch {batch_size} x {seq_windows} windows, {threads} threads: "
          + "  ".join(f"{k} {v:,.0f}" for k, v in med.items()))
    if json_path is not None:
        from picogpt.bench.results import envelope, write_result

        rows = [{"engine": k, "median_tok_s": med[k], "rounds_tok_s": v} for k, v in results.items()]
        setup = {"preset": preset, "batch_size": batch_size, "seq_windows": seq_windows, "threads": threads,
                 "tokens": tokens, "rounds": rounds}
        write_result(json_path, envelope("train-speed", "python -m picogpt.bench.train_speed", rows, setup=setup))


if __name__ == "__main__":
    main()
