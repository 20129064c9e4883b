"""``ReclipResult``: what ``ReCLIP.fit`` returns, typed, and the files it writes.

Every number of metrics.json is a typed attribute here; ``ReclipResult.metrics`` derives the
metrics.json dict from them (same keys as ever), so reports and tables can read either.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..io import remove_stale, write_json
from ..data.datasets import ImageDataset
from ..predictions import Predictions
from ..report import HTML_FILE, INPUTS_FILE, PNG_FILE, ReportFiles, write_report, write_report_inputs
from .adapter import ADAPTER_FILE, Adapter
from .safeguard import Decision

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = PNG_FILE
#: every file a run may write into its output folder
OUTPUT_FILES = (METRICS_FILE, PREDICTIONS_FILE, ADAPTER_FILE, REPORT_FILE, HTML_FILE, INPUTS_FILE)


@dataclass
class RunInfo:
    """What ran: ``task`` (zeroshot or adapt), ``mode``, ``model`` spec, ``pretrained``, ``dataset``
    spec, ``n`` images scored, ``skipped`` entries not read and ``skipped_by_kind`` (their count by kind), ``world_size`` processes, the
    resolved ``config`` (``ReclipConfig.to_dict``), the model's ``profile``
    (``ModelProfile.as_dict``), ``templates`` and the feature extraction's ``images_per_s``."""

    task: str
    mode: str
    model: str
    pretrained: str | None
    dataset: str
    n: int
    skipped: int
    skipped_by_kind: dict[str, int]
    world_size: int
    config: dict[str, Any]
    profile: dict[str, Any]
    templates: list[str]
    images_per_s: float | None


@dataclass
class Passes:
    """Image-tower passes per image: ``image_forward`` (the frozen extraction included unless it
    came from the cache) and ``image_backward``."""

    image_forward: float
    image_backward: float


@dataclass
class ReclipResult:
    """What ``ReCLIP.fit`` returns.

    ``predictions`` of the final model and ``zero_shot`` ones (``Predictions``), ``adapter``
    (None for the training-free modes), ``info`` (``RunInfo``), ``zero_shot_metrics`` and
    ``final_metrics`` (top1, top5, mean_per_class_recall, ece and per-head top-1 when labels
    exist, else empty), ``history`` (per-epoch records), ``title`` (of the report),
    ``logits`` (N x C float32 per head: ``zero_shot``, and for the training modes ``t``, ``v``
    and ``combined``, the prediction head before calibration), ``posterior`` (N x C, the
    safeguard's judge on the frozen model; reclip mode), ``safeguard`` (its ``Decision``),
    ``final_adapted`` (the adapted metrics when the safeguard kept zero-shot),
    ``transduction`` (name and record of a training-free mode's transducer), ``passes``,
    ``seconds`` and ``peak_memory_mb``. ``metrics`` is the metrics.json dict.
    """

    mode: str
    predictions: Predictions
    zero_shot: Predictions
    adapter: Adapter | None
    info: RunInfo
    zero_shot_metrics: dict[str, float]
    final_metrics: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
    posterior: torch.Tensor | None = None
    safeguard: Decision | None = None
    final_adapted: dict[str, float] | None = None
    transduction: tuple[str, dict[str, Any]] | None = None
    passes: Passes | None = None
    seconds: float = 0.0
    peak_memory_mb: float = 0.0

    @property
    def metrics(self) -> dict[str, Any]:
        """What metrics.json holds (a fresh dict built from the typed attributes)."""
        m: dict[str, Any] = {**asdict(self.info), "zero_shot": self.zero_shot_metrics}
        if self.transduction is not None:
            m[self.transduction[0]] = self.transduction[1]
        if self.safeguard is not None:
            m["safeguard"] = self.safeguard.as_dict()
        if self.final_adapted is not None:
            m["final_adapted"] = self.final_adapted
        if self.passes is not None:
            m["epochs"] = self.history
        m["final"] = self.final_metrics
        if self.passes is not None:
            m["passes"] = asdict(self.passes)
        m.update(seconds=self.seconds, peak_memory_mb=self.peak_memory_mb)
        return m

    def save(self, out: str | Path, dataset: ImageDataset | None = None) -> list[Path]:
        """Write metrics.json, predictions.csv, report_inputs.json (thumbnails of ``dataset``'s
        images, else of the predictions' files), for training modes adapter.safetensors, then
        report.png (training modes) and report.html into ``out``, each atomically, and remove
        what an earlier run left there that this one does not write; returns the paths written
        (none off rank 0)."""
        if not distributed.is_main():
            return []
        out = Path(out)
        written = [out / PREDICTIONS_FILE, out / METRICS_FILE]
        self.predictions.save_csv(written[0])
        if self.adapter is not None:
            written.append(out / ADAPTER_FILE)
            self.adapter.save(written[-1])
        files = ReportFiles.of_run(out)
        written.append(write_report_inputs(files.inputs, self.predictions, self.zero_shot, dataset))
        write_json(written[1], self.metrics)  # its presence means the run finished
        written += write_report(files)  # built from the files above, as `reclip report` does
        remove_stale(out, (ADAPTER_FILE, REPORT_FILE), written)
        return written
