"""What users see of a run: ``report.png`` (per-epoch curves) and ``report.html`` (the
page to audit the labels: settings and the safeguard's decision in words, metrics, curves,
per-class counts and thumbnails, changed predictions, confusion matrix).

Both are built from the files a run leaves (metrics.json, predictions.csv and
report_inputs.json), by ``write_report``: at the end of every run with ``out``, after
``reclip predict``, and by ``reclip report RUN_DIR`` for a finished run.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ReclipError
from ..io import atomic_write_text
from .html import render_html
from .inputs import read_report_inputs, write_report_inputs
from .png import curves_figure, png_bytes, write_png

__all__ = ["ReportFiles", "write_report", "write_report_inputs"]

HTML_FILE = "report.html"
PNG_FILE = "report.png"
INPUTS_FILE = "report_inputs.json"


@dataclass(frozen=True)
class ReportFiles:
    """Where a report's inputs and outputs live. A run folder holds metrics.json,
    predictions.csv, report_inputs.json, report.png and report.html; ``reclip predict --out
    X.csv`` writes X.csv, X.metrics.json, X.report_inputs.json and X.report.html."""

    metrics: Path
    predictions: Path
    inputs: Path
    png: Path | None
    html: Path

    @classmethod
    def of_run(cls, folder: str | Path) -> "ReportFiles":
        folder = Path(folder)
        return cls(folder / "metrics.json", folder / "predictions.csv", folder / INPUTS_FILE, folder / PNG_FILE,
                   folder / HTML_FILE)

    @classmethod
    def of_predictions(cls, csv_path: str | Path) -> "ReportFiles":
        csv_path = Path(csv_path)
        return cls(csv_path.with_suffix(".metrics.json"), csv_path, csv_path.with_suffix(".report_inputs.json"),
                   None, csv_path.with_suffix(".report.html"))

    @classmethod
    def of(cls, path: str | Path) -> "ReportFiles":
        """A run folder, or the predictions CSV of ``reclip predict``."""
        path = Path(path)
        if path.is_dir():
            return cls.of_run(path)
        if path.suffix == ".csv" and path.is_file():
            return cls.of_predictions(path)
        raise ReclipError(f"{path} is neither a run folder nor a predictions CSV; pass the --out of "
                          "reclip adapt/zeroshot/demo or of reclip predict")


def _read_predictions(path: Path) -> tuple[list[int], np.ndarray, np.ndarray]:
    """predictions.csv's index, pred and confidence columns."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return ([int(r["index"]) for r in rows], np.array([int(r["pred"]) for r in rows], dtype=np.int64),
                np.array([float(r["confidence"]) for r in rows]))
    except FileNotFoundError:
        raise ReclipError(f"{path} is missing; is this the output of a finished run?") from None
    except (OSError, KeyError, ValueError) as exc:
        raise ReclipError(f"cannot read {path} ({exc}); it is not a reclip predictions file") from None


def write_report(files: ReportFiles | str | Path) -> list[Path]:
    """Build report.png (runs with per-epoch records) and report.html from ``files`` (or a
    run folder, or ``reclip predict``'s CSV); returns the paths written."""
    if not isinstance(files, ReportFiles):
        files = ReportFiles.of(files)
    try:
        metrics = json.loads(files.metrics.read_text())
    except FileNotFoundError:
        raise ReclipError(f"{files.metrics} is missing: the run has not finished (or this is not its folder)") from None
    except (OSError, ValueError) as exc:
        raise ReclipError(f"cannot read {files.metrics} ({exc})") from None
    indices, pred, confidence = _read_predictions(files.predictions)
    inputs = read_report_inputs(files.inputs, indices)
    written = []
    curves = png_bytes(curves_figure(metrics)) if metrics.get("epochs") else None
    if curves is not None and files.png is not None:
        written.append(write_png(files.png, curves))
    atomic_write_text(files.html, render_html(metrics, indices, pred, confidence, inputs, curves,
                                              files.html.parent))
    return written + [files.html]
