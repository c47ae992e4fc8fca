"""The loss plot: train and val loss per step from `log.jsonl`, as a PNG (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_loss_plot(log_path: Path, png_path: Path) -> None:
    """Redraw `png_path` from every record in `log_path` (written to a temp file, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    train = [(r["step"], r["train_loss"]) for r in records if r.get("train_loss") is not None]
    if train:
        ax.plot(*zip(*train), label="train (mean since last eval)")
    ax.plot([r["step"] for r in records], [r["val_loss"] for r in records], marker="o", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/char)")
    ax.set_title("PicoGPT training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, metadata={"Software": "picogpt-train"})
    plt.close(fig)
    os.replace(tmp, png_path)
