"""``report.html``: one self-contained page to audit a run without labels (Jinja2 template
``templates/report.html.j2``; figures from ``png``, thumbnails from report_inputs.json)."""
from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from .. import __version__
from .inputs import ReportInputs
from .png import confusion_figure, png_bytes, run_title

METRIC_COLUMNS = (("top1", "top-1"), ("top5", "top-5"), ("mean_per_class_recall", "mean per-class recall"),
                  ("ece", "ECE"))
BAR_PX = 160

_environment = jinja2.Environment(loader=jinja2.PackageLoader("reclip.report", "templates"),
                                  autoescape=True, undefined=jinja2.StrictUndefined,
                                  trim_blocks=True, lstrip_blocks=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _percent(x: float) -> str:
    return f"{100 * x:.2f}%"


def decision(metrics: dict[str, Any]) -> dict[str, Any]:
    """The run's outcome in words: which predictions it outputs and why."""
    guard = metrics.get("safeguard")
    mode = metrics.get("mode")
    if metrics.get("task") == "predict":
        return {"kind": "none", "sentences": [
            f"Predictions of an adapted model ({metrics.get('adapter', '?')}) on new images. Whether the adapted or "
            "the zero-shot model was kept was decided when the adapter was trained: see that run's report."]}
    if guard is None:
        what = {"zero-shot": "the zero-shot predictions (no adaptation)",
                "transductive": "label propagation's predictions on the frozen model (no training)",
                "transclip": "TransCLIP-style transduction's predictions (no training)"}.get(
            mode, f"the adapted model's predictions ({mode})")
        return {"kind": "none", "sentences": [f"Output: {what}. Only the reclip mode runs the safeguard, so nothing "
                                              "was checked against zero-shot."]}
    sentences = []
    if guard["kept"] == "zero-shot":
        sentences.append("The safeguard fell back to zero-shot: the predictions in this report (and in "
                         "predictions.csv) are the zero-shot model's, not the adapted model's; the adapted model's "
                         "curves are drawn for reference.")
    else:
        sentences.append("The safeguard kept the adapted model: the predictions in this report are its predictions.")
    sentences.append(f"Why: {guard['reason']}.")
    if guard["kept"] == "adapted":
        if guard.get("confidence_target") is not None:
            sentences.append(f"Confidences were calibrated (temperature {guard['temperature']:.2f}) to a mean of "
                             f"{_percent(guard['confidence_target'])}, label propagation's mean confidence on the "
                             "frozen model.")
        else:
            sentences.append("Confidences were not calibrated.")
    else:
        sentences.append("The zero-shot confidences are kept as they are (no calibration).")
    return {"kind": "fallback" if guard["kept"] == "zero-shot" else "kept", "sentences": sentences}


def _metric_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    if "top1" not in metrics.get("final", metrics):
        return []
    row = lambda name, m, chosen: {"name": name, "chosen": chosen,  # noqa: E731
                                   "cells": [_percent(m[k]) if k in m else "-" for k, _ in METRIC_COLUMNS]}
    if metrics.get("task") == "predict":
        return [row("adapted model", metrics, True)]
    final, zero_shot = metrics["final"], metrics["zero_shot"]
    if metrics.get("mode") == "zero-shot":
        return [row("zero-shot", zero_shot, True)]
    if "final_adapted" in metrics:
        return [row("zero-shot", zero_shot, True), row(f"adapted model ({metrics['mode']}), not kept",
                                                         metrics["final_adapted"], False)]
    return [row("zero-shot", zero_shot, False), row(f"{metrics['mode']}", final, True)]


def _settings(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(k, str(metrics[k])) for k in ("task", "mode", "model", "pretrained", "adapter", "dataset", "n",
                                           "skipped", "world_size", "seconds", "images_per_s") if k in metrics]
    if "epochs" in metrics:
        rows.append(("epochs trained", str(len(metrics["epochs"]))))
    rows += [(f"config.{k}", str(v)) for k, v in metrics.get("config", {}).items()]
    if metrics.get("templates"):
        rows.append(("templates", " | ".join(metrics["templates"])))
    return rows


def render_html(metrics: dict[str, Any], indices: list[int], pred: np.ndarray, confidence: np.ndarray,
                inputs: ReportInputs, curves_png: bytes | None, folder: Path) -> str:
    """The page for one run: ``indices``, ``pred`` and ``confidence`` are predictions.csv's
    columns (N,), ``inputs`` report_inputs.json, ``curves_png`` report.png's bytes (or None)."""
    names = inputs.classnames
    labels = np.asarray(inputs.labels) if inputs.labels is not None else None
    zs_pred = np.asarray(inputs.zero_shot_pred) if inputs.zero_shot_pred is not None else None
    has_zero_shot = zs_pred is not None and metrics.get("mode") != "zero-shot"
    n = len(pred)

    def thumb(row: int, changed: bool = False) -> dict[str, Any]:
        index = indices[row]
        parts = [f"image {index}", f"predicted {names[pred[row]]} ({100 * confidence[row]:.0f}%)"]
        if zs_pred is not None:
            parts.append(f"zero-shot {names[zs_pred[row]]} ({100 * inputs.zero_shot_confidence[row]:.0f}%)")
        verdict = ""
        if labels is not None and labels[row] >= 0:
            parts.append(f"label {names[labels[row]]}")
            verdict = "right" if labels[row] == pred[row] else "wrong"
        caption = (f"{names[zs_pred[row]]} → {names[pred[row]]}" if changed
                   else f"{100 * confidence[row]:.0f}%")
        return {"index": index, "src": inputs.thumbnails.get(index), "tooltip": "; ".join(parts),
                "caption": caption, "verdict": verdict}

    counts = Counter(pred.tolist())
    zs_counts = Counter(zs_pred.tolist()) if zs_pred is not None else Counter()
    labelled = Counter(labels[labels >= 0].tolist()) if labels is not None else Counter()
    correct = Counter(labels[(labels >= 0) & (labels == pred)].tolist()) if labels is not None else Counter()
    top = max([1, *counts.values(), *zs_counts.values()])
    classes = []
    for c, name in enumerate(names):
        strip = inputs.strips.get(c, {"most": [], "least": []})
        classes.append({
            "id": c, "name": name, "count": counts[c], "zero_shot_count": zs_counts[c],
            "bar": round(BAR_PX * counts[c] / top), "zero_shot_bar": round(BAR_PX * zs_counts[c] / top),
            "labelled": labelled[c], "recall": _percent(correct[c] / labelled[c]) if labelled[c] else "-",
            "most": [thumb(r) for r in strip["most"]], "least": [thumb(r) for r in strip["least"]]})
    changed_total = int((pred != zs_pred).sum()) if has_zero_shot else 0
    confusion = (data_uri(png_bytes(confusion_figure(labels, pred, names)))
                 if labels is not None and (labels >= 0).any() else None)
    subtitle = f"{n} images" + (f" ({metrics['skipped']} unreadable, skipped)" if metrics.get("skipped") else "")
    if "seconds" in metrics:
        subtitle += f"; {metrics['seconds']:.1f} s"
    return _environment.get_template("report.html.j2").render(
        title=run_title(metrics), subtitle=subtitle, fallback="final_adapted" in metrics,
        decision=decision(metrics), metric_names=[label for _, label in METRIC_COLUMNS],
        metric_rows=_metric_rows(metrics), curves=data_uri(curves_png) if curves_png else None,
        n=n, classes=classes, strip=max((len(s["most"]) for s in inputs.strips.values()), default=0),
        has_zero_shot=has_zero_shot, has_labels=labels is not None,
        changed=[thumb(r, changed=True) for r in inputs.changed] if has_zero_shot else [],
        changed_total=changed_total, changed_share=_percent(changed_total / max(n, 1)),
        confusion=confusion, settings=_settings(metrics), version=__version__, folder=str(folder))
