"""A stage's loss log on disk: losses.jsonl (one line per step) and loss.png (raw points and a moving average per
task). Live metrics go to accelerate's trackers (TensorBoard, wandb, mlflow: the recipe's `log_with`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_losses(losses: list[dict], stage_dir: Path) -> None:
    with (stage_dir / "losses.jsonl").open("w") as f:
        f.writelines(json.dumps(x) + "\n" for x in losses)
    plot_losses(losses, stage_dir / "loss.png")


def plot_losses(losses: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for task in sorted({x["task"] for x in losses}):
        pts = [(x["step"], x["loss"]) for x in losses if x["task"] == task]
        ax.plot(*zip(*pts), ".", alpha=0.35, label=task)
        if len(pts) >= 5:
            w = max(1, len(pts) // 20)
            smooth = np.convolve([p[1] for p in pts], np.ones(w) / w, mode="valid")
            ax.plot([p[0] for p in pts][w - 1:], smooth, "-")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(path.parent.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
