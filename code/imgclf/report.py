"""Per-epoch metrics as CSV and JSON, and a PNG of the learning curves."""

from __future__ import annotations

import csv
import json
import os

FIELDS = ["epoch", "train_loss", "valid_loss", "valid_acc", "lr", "epoch_time", "images_per_sec"]


def write_metrics(output_dir: str, history: list[dict], final: dict) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump({"epochs": history, "final": final}, f, indent=2)


def plot_learning_curves(output_dir: str, history: list[dict], best_epoch: int | None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["valid_loss"] for h in history], "o-", label="valid loss")
    ax2.plot(epochs, [h["valid_acc"] for h in history], "o-", color="tab:green", label="valid acc")
    if best_epoch is not None:
        for ax in (ax1, ax2):
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(output_dir, "learning_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
