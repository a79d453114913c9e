"""Matplotlib figures shared by train, course and report.

Outside a notebook the Agg backend is chosen (files only, no display needed); inside a Jupyter
kernel, or when MPLBACKEND says otherwise, the backend is left alone so figures show inline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def returned(fig):
    """A figure to return from a `show_*` / `plot_*` function: closed, so that Jupyter shows it
    once (as the cell's value) and not a second time when the cell ends."""
    plt.close(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def plot_losses(history: list[dict], path: str | Path) -> Path:
    """Train/valid loss per epoch, and accuracy on a second axis when recorded."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] + 1 for h in history]
    for key, style in (("train_loss", "o-"), ("valid_loss", "s-")):
        if history and key in history[0]:
            ax.plot(epochs, [h[key] for h in history], style, label=key.replace("_", " "))
    frozen = [h["epoch"] + 1 for h in history if h.get("phase") == "frozen"]
    if frozen:  # fine_tune's first epochs train the head only
        ax.axvspan(min(frozen) - 0.5, max(frozen) + 0.5, color="0.9", label="frozen body")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if history and "accuracy" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["accuracy"] for h in history], "g^--", label="accuracy")
        ax2.set_ylabel("valid accuracy")
        ax2.set_ylim(0, 1.02)
        ax2.legend(loc="center right")
    ax.legend(loc="upper right")
    ax.set_title("training history")
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """Confusion matrix with counts in the cells (rows: actual, columns: predicted)."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 1.6 + 0.6 * n))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title("confusion matrix")
    return _save(fig, path)
