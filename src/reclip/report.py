"""``report.png``: how a ReCLIP run went, epoch by epoch."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .io import atomic_path  # noqa: E402


def plot_report(path: str | Path, history: list[dict], zero_shot: dict, final: dict, title: str,
                safeguard: dict | None = None) -> None:
    """Accuracy and pseudo-label accuracy per epoch (when labels exist), agreement and losses.

    ``history`` holds one dict per epoch (evaluated before that epoch's training pass);
    ``final`` is the evaluation after the last pass, drawn at x = number of epochs;
    ``safeguard`` (metrics.json's) adds the final head agreement and estimated gain, their
    thresholds and the mean confidence the calibration aimed for.
    """
    epochs = [h["epoch"] for h in history]
    has_labels = "top1" in zero_shot
    fig, axes = plt.subplots(1, 3 if has_labels else 2, figsize=(15 if has_labels else 10, 4))
    ax_iter = iter(axes)
    if has_labels:
        ax = next(ax_iter)
        x_eval = epochs + [len(history)]
        for key, label in (("top1", "ReCLIP (combined)"), ("top1_t", "ReCLIP-T"), ("top1_v", "ReCLIP-V")):
            ys = [h.get(key) for h in history] + [final.get(key)]
            if all(y is not None for y in ys):
                ax.plot(x_eval, [100 * y for y in ys], marker="o", label=label)
        for key, label in (("pseudo_label_acc_t", "pseudo labels T"), ("pseudo_label_acc_v", "pseudo labels V")):
            if all(key in h for h in history):
                ax.plot(epochs, [100 * h[key] for h in history], ls="--", marker=".", label=label)
        ax.axhline(100 * zero_shot["top1"], color="grey", ls=":", label="zero-shot")
        ax.set(xlabel="epochs trained", ylabel="top-1 (%)", title="accuracy")
        ax.legend(fontsize=8)
    ax = next(ax_iter)
    ax.plot(epochs, [100 * h["agreement"] for h in history], marker="o", color="tab:green", label="pseudo labels")
    if all("head_agreement" in h for h in history):
        ys = [100 * h["head_agreement"] for h in history] + ([100 * safeguard["agreement"]] if safeguard else [])
        ax.plot(list(range(len(ys))), ys, marker="s", color="tab:purple", label="head predictions (safeguard signal)")
    if safeguard and safeguard["threshold"] > 0:
        ax.axhline(100 * safeguard["threshold"], color="tab:red", ls="--",
                   label=f"safeguard threshold (kept: {safeguard['kept']})")
    if safeguard and safeguard.get("confidence_target") is not None:
        ax.plot([len(history)], [100 * safeguard["confidence_target"]], marker="*", ms=12, ls="", color="tab:orange",
                label="mean confidence after calibration")
    ax.set(xlabel="epoch", ylabel="% of images", title="safeguard signals and confidence", ylim=(0, 101))
    handles, labels = ax.get_legend_handles_labels()
    if all("estimated_gain" in h for h in history):
        gain_ax = ax.twinx()
        ys = [100 * h["estimated_gain"] for h in history] + ([100 * safeguard["estimated_gain"]] if safeguard else [])
        gain_ax.plot(list(range(len(ys))), ys, marker="^", color="tab:brown", label="estimated gain, points (right axis)")
        if safeguard and safeguard["min_gain"] > -1:
            gain_ax.axhline(100 * safeguard["min_gain"], color="tab:brown", ls=":", label="gain threshold")
        gain_ax.set_ylabel("estimated top-1 gain over zero-shot (points)")
        more_handles, more_labels = gain_ax.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=7, loc="lower left")
    ax = next(ax_iter)
    for key, label in (("loss_t", "loss T"), ("loss_v", "loss V")):
        if all(key in h for h in history):
            ax.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="cross-entropy on agreed samples", title="training loss")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
