"""The loss curve of a run, drawn from its log.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) of a log.jsonl; a resumed run's repeats keep the last."""
    train, val = {}, {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        (val if "val_loss" in record else train)[record["step"]] = record
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    """Training loss (raw and smoothed) and validation loss against step, as a PNG."""
    # A Figure of its own, not pyplot's: writing a file needs no display, and the caller's
    # pyplot state (a notebook's inline figures) is left alone.
    from matplotlib.figure import Figure

    train, val = read_log(log_path)
    if not train:
        return
    steps = np.array([r["step"] for r in train])
    losses = np.array([r["loss"] for r in train])
    window = max(1, len(losses) // 50)
    smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
    ax.plot(steps[window - 1:], smoothed, color="tab:blue", label=f"train (mean of {window})")
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color="tab:orange",
                label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
