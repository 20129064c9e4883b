"""``report_inputs.json``: what report.html needs beyond metrics.json and predictions.csv.

Written next to them when a run is saved: the class names, the labels and zero-shot
predictions of the rows of predictions.csv (when they exist), which images the report shows
(per predicted class its most and least confident ones, and a sample of the images whose
prediction the adaptation changed) and those images as small embedded thumbnails. The
report is then rebuilt from the files alone (``reclip report RUN_DIR``), including for images
that live in arrays or archives.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.datasets import ImageDataset
from ..errors import ReclipError
from ..io import write_json
from ..predictions import Predictions

THUMBNAIL_PX = 64
CHANGED_SHOWN = 48  # images whose prediction changed, at most
STRIP_IMAGES = 240  # thumbnails in all class strips together, about (so a report stays a few MB)


def strip_length(classes: int) -> int:
    """Most (and least) confident images shown per class: 6 for up to 20 classes, fewer
    for more (1 at least), so a 1,000-class report holds about 2,000 thumbnails (a few MB)."""
    return max(1, min(6, STRIP_IMAGES // (2 * classes)))


def indices_digest(indices: list[int]) -> str:
    """Ties report_inputs.json to the predictions.csv whose rows it describes."""
    return hashlib.sha256(json.dumps(indices).encode()).hexdigest()[:16]


def choose_images(pred: torch.Tensor, confidence: torch.Tensor, zero_shot_pred: torch.Tensor | None,
                  classes: int, seed: int = 0) -> tuple[dict[int, dict[str, list[int]]], list[int]]:
    """Rows to show: per predicted class (of ``classes``) its ``strip_length`` most confident
    rows, highest first, and least confident ones, lowest first (disjoint); and up to
    ``CHANGED_SHOWN`` rows, sampled with ``seed``, whose prediction differs from zero-shot's.
    ``pred``, ``confidence`` and ``zero_shot_pred`` are (N,), one per row of predictions.csv."""
    length = strip_length(classes)
    strips: dict[int, dict[str, list[int]]] = {}
    for c in range(classes):
        rows = (pred == c).nonzero().flatten()
        order = rows[torch.argsort(confidence[rows], descending=True, stable=True)].tolist()
        most = order[:length]
        strips[c] = {"most": most, "least": [r for r in reversed(order[length:])][:length]}
    changed: list[int] = []
    if zero_shot_pred is not None:
        rows = (pred != zero_shot_pred).nonzero().flatten().numpy()
        if len(rows) > CHANGED_SHOWN:
            rows = np.sort(np.random.default_rng(seed).choice(rows, CHANGED_SHOWN, replace=False))
        changed = [int(r) for r in rows]
    return strips, changed


def thumbnail(image: Image.Image) -> str:
    """A data URI of ``image`` shrunk to fit ``THUMBNAIL_PX`` (never enlarged): PNG or JPEG,
    whichever is smaller."""
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    encoded = {}
    for fmt, options in (("png", {"optimize": True}), ("jpeg", {"quality": 85})):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        encoded[fmt] = buffer.getvalue()
    fmt = min(encoded, key=lambda f: len(encoded[f]))
    return f"data:image/{fmt};base64," + base64.b64encode(encoded[fmt]).decode()


def _open_image(index: int, dataset: ImageDataset | None, paths: list[str] | None) -> Image.Image | None:
    try:
        if dataset is not None:
            return dataset[index][0]
        if paths:
            with Image.open(paths[index]) as image:
                image.load()
                return image
    except Exception:  # noqa: BLE001 - an unreadable image is left out of the report, not fatal
        return None
    return None


def write_report_inputs(path: str | Path, predictions: Predictions, zero_shot: Predictions | None = None,
                        dataset: ImageDataset | None = None) -> Path:
    """Write ``report_inputs.json`` for ``predictions`` (the rows of predictions.csv), the
    ``zero_shot`` ones of the same images (None: no comparison) and the thumbnails of the
    chosen images, read from ``dataset`` (its images untransformed) or else from the files of
    ``predictions.paths`` (None and no files: a report without pictures)."""
    if dataset is not None:
        dataset = copy.copy(dataset)
        dataset.transform = None
    zs_pred = zero_shot.pred if zero_shot is not None else None
    strips, changed = choose_images(predictions.pred, predictions.confidence, zs_pred, len(predictions.classnames))
    indices = predictions.indices.tolist()
    shown = sorted({r for s in strips.values() for r in s["most"] + s["least"]} | set(changed))
    thumbnails = {}
    for row in shown:
        image = _open_image(indices[row], dataset, predictions.paths)
        if image is not None:
            thumbnails[str(indices[row])] = thumbnail(image)
    labels = predictions.labels.tolist()
    blob: dict[str, Any] = {
        "rows": len(indices), "indices_digest": indices_digest(indices),
        "classnames": [names[0] for names in predictions.classnames],
        "labels": labels if any(label >= 0 for label in labels) else None,
        "zero_shot_pred": zs_pred.tolist() if zs_pred is not None else None,
        "zero_shot_confidence": [round(c, 6) for c in zero_shot.confidence.tolist()] if zero_shot is not None else None,
        "strips": {str(c): s for c, s in strips.items()}, "changed": changed,
        "thumbnails": thumbnails}
    write_json(path, blob)
    return Path(path)


@dataclass
class ReportInputs:
    """report_inputs.json as read back (see ``write_report_inputs``)."""

    classnames: list[str]
    labels: list[int] | None
    zero_shot_pred: list[int] | None
    zero_shot_confidence: list[float] | None
    strips: dict[int, dict[str, list[int]]]
    changed: list[int]
    thumbnails: dict[int, str]


def read_report_inputs(path: Path, indices: list[int]) -> ReportInputs:
    """Read ``path``, checking that it describes the predictions.csv rows with ``indices``."""
    try:
        blob = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReclipError(f"{path} is missing; it is written with the run's outputs, so rerun the command "
                          "that made this folder") from None
    except (OSError, ValueError) as exc:
        raise ReclipError(f"cannot read {path} ({exc}); rerun the command that made it") from None
    if blob.get("rows") != len(indices) or blob.get("indices_digest") != indices_digest(indices):
        raise ReclipError(f"{path} belongs to other predictions than the ones next to it; rerun the command "
                          "that made this folder")
    return ReportInputs(classnames=blob["classnames"], labels=blob["labels"], zero_shot_pred=blob["zero_shot_pred"],
                        zero_shot_confidence=blob["zero_shot_confidence"],
                        strips={int(c): s for c, s in blob["strips"].items()}, changed=blob["changed"],
                        thumbnails={int(i): uri for i, uri in blob["thumbnails"].items()})
