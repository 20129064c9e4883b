"""The report's figures: ``report.png`` (how a self-training run went, epoch by epoch) and
the confusion matrix, drawn with matplotlib from metrics.json's content.

The x axis counts epochs trained: record k of ``metrics["epochs"]`` was evaluated after k
epochs (the console's ``after k/N epochs`` line), the final evaluation after all N. When the
safeguard falls back, the adapted model's curves still run to its final evaluation, the kept
zero-shot result is marked as the chosen output and the title says so.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..io import atomic_path  # noqa: E402

DPI = 100
CONFUSION_TICK_LABELS_MAX = 40  # classes; above it the matrix has no per-class tick labels


def run_title(metrics: dict[str, Any]) -> str:
    """What the run was and what it chose, e.g. ``ReCLIP (reclip): tiny on images; safeguard
    fell back to zero-shot``."""
    model = metrics.get("model", "?") + (f" ({metrics['pretrained']})" if metrics.get("pretrained") else "")
    dataset = Path(str(metrics.get("dataset", "?"))).name or metrics.get("dataset", "?")
    if metrics.get("task") == "predict":
        return f"reclip predict: {model} with adapter {Path(str(metrics.get('adapter', '?'))).name} on {dataset}"
    title = f"ReCLIP ({metrics.get('mode', '?')}): {model} on {dataset}"
    guard = metrics.get("safeguard")
    if guard is not None:
        title += ("; safeguard fell back to zero-shot" if guard["kept"] == "zero-shot"
                  else "; safeguard kept the adapted model")
    return title


def _legend_below(ax: plt.Axes) -> None:
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)


def _accuracy_panel(ax: plt.Axes, metrics: dict[str, Any]) -> None:
    history, epochs = metrics["epochs"], len(metrics["epochs"])
    adapted = metrics.get("final_adapted", metrics["final"])
    xs = [h["epoch"] for h in history] + [epochs]
    fusion = metrics.get("config", {}).get("head_fusion", "average")
    prediction = "V's head alone" if fusion == "v" else f"T and V fused: {fusion}"
    for key, label, colour in (("top1", f"adapted model ({prediction})", "tab:blue"),
                               ("top1_t", "ReCLIP-T head", "tab:orange"), ("top1_v", "ReCLIP-V head", "tab:green")):
        ys = [h.get(key) for h in history] + [adapted.get(key)]
        if all(y is not None for y in ys):
            wide = key == "top1"  # drawn wide underneath: V's head often lies on top of it
            ax.plot(xs, [100 * y for y in ys], marker="o", color=colour, label=label,
                    lw=5 if wide else 1.5, alpha=0.45 if wide else 1.0, zorder=1 if wide else 2)
    for key, label, colour in (("pseudo_label_acc_t", "T's pseudo labels", "tab:orange"),
                               ("pseudo_label_acc_v", "V's pseudo labels", "tab:green")):
        if all(key in h for h in history):
            ax.plot([h["epoch"] for h in history], [100 * h[key] for h in history], ls="--", marker=".",
                    color=colour, alpha=0.6, label=f"{label} (trained on in the next epoch)")
    zero_shot = 100 * metrics["zero_shot"]["top1"]
    ax.axhline(zero_shot, color="grey", ls=":", label="zero-shot")
    fallback = "final_adapted" in metrics
    chosen = zero_shot if fallback else 100 * metrics["final"]["top1"]
    ax.plot([epochs], [chosen], marker="*", ms=16, ls="", color="tab:red", zorder=5,
            label=f"chosen output: {'zero-shot (safeguard fallback)' if fallback else 'adapted model'}, "
                  f"{chosen:.2f}%")
    ax.set(xlabel="epochs trained", ylabel="top-1 accuracy against the labels (%)", title="accuracy")
    _legend_below(ax)


def _agreement_panel(ax: plt.Axes, metrics: dict[str, Any]) -> None:
    history, guard = metrics["epochs"], metrics.get("safeguard")
    if all("agreement" in h for h in history):
        ax.plot([h["epoch"] for h in history], [100 * h["agreement"] for h in history], marker="o", color="tab:green",
                label="T's and V's pseudo labels agree (trained on)")
    if all("head_agreement" in h for h in history):
        ys = [100 * h["head_agreement"] for h in history] + ([100 * guard["agreement"]] if guard else [])
        ax.plot(range(len(ys)), ys, marker="s", color="tab:purple", label="T's and V's predictions agree")
    if guard and guard["threshold"] > 0:
        ax.axhline(100 * guard["threshold"], color="tab:red", ls="--",
                   label="safeguard: below this at the end, keep zero-shot")
    ax.set(xlabel="epochs trained", ylabel="% of images", title="agreement between T and V", ylim=(0, 101))
    _legend_below(ax)


def _gain_panel(ax: plt.Axes, metrics: dict[str, Any]) -> None:
    history, guard = metrics["epochs"], metrics.get("safeguard")
    ys = [100 * h["estimated_gain"] for h in history] + ([100 * guard["estimated_gain"]] if guard else [])
    ax.plot(range(len(ys)), ys, marker="^", color="tab:brown", label="estimated by label propagation (no labels)")
    if guard and guard["min_gain"] > -1:
        ax.axhline(100 * guard["min_gain"], color="tab:red", ls="--",
                   label="safeguard: at or below this at the end, keep zero-shot")
    ax.set(xlabel="epochs trained", ylabel="points of top-1", title="estimated top-1 gain over zero-shot")
    _legend_below(ax)


def _loss_panel(ax: plt.Axes, metrics: dict[str, Any]) -> None:
    history = metrics["epochs"]
    for key, label in (("loss_t", "ReCLIP-T"), ("loss_v", "ReCLIP-V")):
        if all(key in h for h in history):
            ax.plot([h["epoch"] + 1 for h in history], [h[key] for h in history], marker="o", label=label)
    ax.set(xlabel="epochs trained (loss: mean over that epoch)", ylabel="cross-entropy on agreed images",
           title="training loss")
    _legend_below(ax)


def curves_figure(metrics: dict[str, Any]) -> Figure:
    """report.png's figure of a run with per-epoch records (``metrics["epochs"]``)."""
    history = metrics["epochs"]
    panels = []
    if "top1" in metrics["zero_shot"]:
        panels.append(_accuracy_panel)
    panels.append(_agreement_panel)
    if all("estimated_gain" in h for h in history):
        panels.append(_gain_panel)
    if any("loss_t" in h or "loss_v" in h for h in history):
        panels.append(_loss_panel)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 5.2), squeeze=False)
    for draw, ax in zip(panels, axes[0]):
        draw(ax, metrics)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.3, len(history) + 0.3)
    fig.suptitle(run_title(metrics), fontweight="bold" if "final_adapted" in metrics else "normal")
    fig.tight_layout()
    return fig


def confusion_figure(labels: np.ndarray, pred: np.ndarray, classnames: list[str]) -> Figure:
    """Row-normalised confusion matrix (true class down, predicted across) with counts."""
    c = len(classnames)
    known = labels >= 0
    counts = np.zeros((c, c), dtype=np.int64)
    np.add.at(counts, (labels[known], pred[known]), 1)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.45 * c, 14)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    if c <= CONFUSION_TICK_LABELS_MAX:
        ax.set_xticks(range(c), classnames, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(c), classnames, fontsize=8)
        if c <= 15:
            for i in range(c):
                for j in range(c):
                    if counts[i, j]:
                        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class (chosen output)", ylabel="true class (label)",
           title="confusion matrix (numbers: images)")
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def write_png(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
