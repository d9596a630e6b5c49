"""PNG plots for a run: loss/accuracy curves from metrics.jsonl and a confusion matrix."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(metrics_jsonl: Path, out_png: Path) -> Path:
    rows = [json.loads(ln) for ln in Path(metrics_jsonl).read_text().splitlines() if ln.strip()]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], label="train")
    evaluated = [r for r in rows if "val_loss" in r]
    ax_loss.plot([r["epoch"] for r in evaluated], [r["val_loss"] for r in evaluated], "o-", label="val")
    ax_acc.plot([r["epoch"] for r in evaluated], [r["val_acc"] for r in evaluated], "o-", label="val (all)")
    for key in sorted({k for r in evaluated for k in r if k.startswith("val_acc_")}):
        ax_acc.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], ".--", label=key[4:])
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_confusion(matrix: list[list[int]], labels: list[str], out_png: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    peak = max(max(r) for r in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
