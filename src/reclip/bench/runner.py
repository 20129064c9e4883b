"""``reclip bench``: every label-free method side by side on many targets.

A bench is a list of cells (sample x model x target x method). Each cell is one
``ReCLIP(model, ReclipConfig(**METHODS[method])).fit(target)`` on sample s of the target
(``samples`` disjoint image sets per target, see :mod:`reclip.bench.targets`); its record is
written to ``out/cells/<key>.json`` when it finishes, with its per-image predictions next to
it in ``out/cells/<key>.npz`` (dataset index, true label, predicted class, confidence), so an
interrupted bench rerun continues with the missing cells (and a training cell continues from
its last epoch's checkpoint in ``out/runs/<key>``). A damaged or empty record is treated as
missing: one warning names it and the cell runs again. Features are extracted once per
(target, sample, model): the feature cache serves every later cell. After every cell the
summary files are rewritten: ``results.json`` / ``results.csv`` (one record per cell,
CLIP_benchmark's key names where they overlap), ``intervals.json`` (paired bootstrap
intervals, :mod:`reclip.bench.stats`), ``results.md`` and ``results.png``
(:mod:`reclip.bench.tables`).
"""
from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..callbacks import Callback
from ..data.benchmarks import canonical_name
from ..data.datasets import ImageDataset, load_dataset
from ..data.sampling import random_subset
from ..errors import ReclipError
from ..io import atomic_write_text, output_folder, write_json
from ..method.config import ReclipConfig
from ..method.run import ReCLIP
from ..models.base import DualEncoder
from ..models.factory import load_model
from . import targets as offline_targets
from .tables import CellScores, intervals, markdown, plot

METHODS: dict[str, dict[str, Any]] = {
    "zero-shot": {"mode": "zero-shot"},
    "transductive": {"mode": "transductive"},
    "transclip": {"mode": "transclip"},
    "reclip": {"mode": "reclip"},
    "v-only": {"mode": "v-only"},
    "t-only": {"mode": "t-only"},
    "reclip-v-frozen": {"mode": "reclip", "v_tower": "frozen"},
    "reclip-v-train": {"mode": "reclip", "v_tower": "train"},
    "reclip-v-centroids": {"mode": "reclip", "v_graph": "centroids"},
    "reclip-fused-calibrated": {"mode": "reclip", "head_fusion": "calibrated"},
    "reclip-balance-estimated": {"mode": "reclip", "class_balance": "estimated"},
    # the paper's V head and prediction (centroids, averaged with T's) whatever V's tower
    "reclip-paper-heads": {"mode": "reclip", "v_head": "centroids", "head_fusion": "average"},
    # V's linear head alone, predicting alone (the default on frozen towers before the blend)
    "reclip-linear-head": {"mode": "reclip", "v_head": "linear"},
    # V on BatchNorm towers (docs/method.md, "Norm-aware V"): affines at a tenth of the lr, BatchNorm
    # statistics blended with the target's (share 0.2 or 0.5) with the affines frozen or trained
    "reclip-v-train-lr1e-4": {"mode": "reclip", "v_tower": "train", "lr_v": 1e-4},
    "reclip-v-bn-blend-0.2": {"mode": "reclip", "v_tower": "frozen", "v_bn_blend": 0.2},
    "reclip-v-bn-blend-0.5": {"mode": "reclip", "v_tower": "frozen", "v_bn_blend": 0.5},
    "reclip-v-bn-blend-0.2-train": {"mode": "reclip", "v_tower": "train", "v_bn_blend": 0.2},
}
DEFAULT_METHODS = ("zero-shot", "transductive", "transclip", "reclip")
PAPER_BENCHMARKS = ("cifar10", "cifar100", "imagenet", "caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101",
                    "flowers102", "oxford_pets", "stanford_cars", "sun397", "mnist", "gtsrb", "stl10", "country211",
                    "pcam", "renderedsst2", "birdsnap", "fer2013", "resisc45", "aid")
METRICS = ("acc1", "acc5", "mean_per_class_recall", "ece")
RECORD_KEYS = ("dataset", "model", "pretrained", "method", "sample", "n", *METRICS, "seconds", "fell_back")
OFFLINE_DEFAULT_N = 2000
#: The offline suite's models (two real models) and disjoint image sets per target.
OFFLINE_MODELS = ("bridge", "bridge-lite1")
OFFLINE_SAMPLES = 3


class BenchWarning(UserWarning):
    """A bench output file was unreadable and is ignored (its cell runs again)."""


@dataclass(frozen=True)
class Cell:
    """One measurement: ``method`` (a key of METHODS) with ``model``/``pretrained`` on sample
    ``sample`` of ``target`` (an offline target name, a benchmark name or a dataset path)."""

    target: str
    model: str
    pretrained: str | None
    method: str
    sample: int = 0

    @property
    def key(self) -> str:
        parts = (self.target, self.model, self.pretrained or "-", self.method, f"s{self.sample}")
        return "__".join("".join(c if c.isalnum() or c in "-._" else "_" for c in p) for p in parts)


def parse_model(text: str) -> tuple[str, str | None]:
    """``"ViT-L-14@openai"`` -> ("ViT-L-14", "openai"); ``"bridge"`` -> ("bridge", None)."""
    spec, _, pretrained = text.partition("@")
    return spec, pretrained or None


def make_cells(targets: Sequence[str], models: Sequence[str], methods: Sequence[str],
               samples: int = 1) -> list[Cell]:
    """Every (sample, model, target, method) combination, in that nesting order (so an
    interrupted bench has finished whole samples of every model first)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ReclipError(f"methods: unknown {', '.join(unknown)}; use any of {', '.join(METHODS)}")
    if not targets or not models or not methods:
        raise ReclipError("a bench needs at least one target, one model and one method")
    if samples < 1:
        raise ReclipError(f"samples must be at least 1, got {samples}")
    return [Cell(t, *parse_model(m), method, s) for s in range(samples) for m in models for t in targets
            for method in methods]


def offline_suite(methods: Sequence[str] = DEFAULT_METHODS, models: Sequence[str] = OFFLINE_MODELS,
                  samples: int = OFFLINE_SAMPLES) -> list[Cell]:
    """Two bridge models on every offline target built from Fashion-MNIST test images, ``samples``
    disjoint image sets each."""
    return make_cells(list(offline_targets.OFFLINE_TARGETS), models, methods, samples)


def paper_suite(methods: Sequence[str] = ("zero-shot", "reclip"), models: Sequence[str] = ("ViT-L-14@openai",),
                targets: Sequence[str] = PAPER_BENCHMARKS, samples: int = 1) -> list[Cell]:
    """The paper's 22 benchmarks with CLIP ViT-L/14 (OpenAI weights)."""
    return make_cells(targets, models, methods, samples)


class Bench:
    """Runs cells into ``out`` (see the module docstring); ``n`` images per target (None: all)."""

    def __init__(self, out: str | Path, *, n: int | None = 2000, data_root: str | None = None, seed: int = 0,
                 device: str | None = None, workers: int | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.out = Path(out)
        self.n, self.data_root, self.seed, self.device, self.workers = n, data_root, seed, device, workers
        self.callbacks = list(callbacks)
        self._models: dict[tuple[str, str | None], DualEncoder] = {}
        self._datasets: dict[tuple[str, str, str | None, int], ImageDataset] = {}
        self._warned: set[Path] = set()
        self._read: dict[Path, tuple[tuple[int, int], tuple[dict[str, Any], CellScores]]] = {}

    def run(self, cells: Iterable[Cell]) -> list[dict[str, Any]]:
        """Run the cells not yet recorded; returns the records of all of ``cells``."""
        cells = list(cells)
        with output_folder(self.out):
            for i, cell in enumerate(cells):
                if self.read_cell(cell) is not None:
                    continue
                print(f"bench cell {i + 1}/{len(cells)}: {cell.method} / {cell.model} / {cell.target} "
                      f"/ sample {cell.sample}", flush=True)
                record, scores = self.run_cell(cell)
                scores.save(self.scores_path(cell))  # before the record: a record means a finished cell
                write_json(self.record_path(cell), record)
                self.write_summary(cells)
            records = self.write_summary(cells)
        return records

    def record_path(self, cell: Cell) -> Path:
        return self.out / "cells" / f"{cell.key}.json"

    def scores_path(self, cell: Cell) -> Path:
        return self.out / "cells" / f"{cell.key}.npz"

    def read_cell(self, cell: Cell) -> tuple[dict[str, Any], CellScores] | None:
        """The finished cell's record and per-image predictions; None if it has not finished, or if
        either file is damaged or empty (then one warning names the file and the cell runs again)."""
        path = self.record_path(cell)
        if not path.is_file():
            return None
        stamp = (path.stat().st_mtime_ns, path.stat().st_size)
        if self._read.get(path, (None,))[0] == stamp:  # unchanged since read: keep its bootstrap
            return self._read[path][1]
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("method") != cell.method:
                raise ValueError("not a cell record")
        except (OSError, ValueError) as exc:
            return self._damaged(path, exc)
        try:
            scores = CellScores.load(self.scores_path(cell))
        except (OSError, ValueError, KeyError) as exc:
            return self._damaged(self.scores_path(cell), exc)
        self._read[path] = (stamp, (record, scores))
        return record, scores

    def _damaged(self, path: Path, exc: Exception) -> None:
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"bench: ignoring unreadable {path} ({type(exc).__name__}); its cell runs again",
                          BenchWarning, stacklevel=3)
        return None

    def run_cell(self, cell: Cell) -> tuple[dict[str, Any], CellScores]:
        """Run one cell: its record (metrics) and its per-image predictions."""
        model = self._model(cell)
        dataset = self._dataset(cell, model)
        config = ReclipConfig(**METHODS[cell.method], seed=self.seed, workers=self.workers)
        trains = config.trains
        run_dir = self.out / "runs" / cell.key
        result = ReCLIP(model, config).fit(dataset, out=run_dir if trains else None,
                                           resume=trains and run_dir.is_dir(), callbacks=self.callbacks)
        final = result.metrics["final"]
        safeguard = result.metrics.get("safeguard")
        record = {"dataset": cell.target, "model": cell.model, "pretrained": cell.pretrained, "method": cell.method,
                  "sample": cell.sample, "n": result.metrics["n"], "acc1": final.get("top1"),
                  "acc5": final.get("top5"), "mean_per_class_recall": final.get("mean_per_class_recall"),
                  "ece": final.get("ece"), "seconds": result.metrics["seconds"],
                  "fell_back": None if safeguard is None else safeguard["kept"] == "zero-shot",
                  "predictions": self.scores_path(cell).name}
        if result.history:
            record["epochs"] = len(result.history)
        predictions = result.predictions
        scores = CellScores(index=predictions.indices.numpy(), label=predictions.labels.numpy(),
                            pred=predictions.pred.numpy(), confidence=predictions.confidence.numpy())
        return record, scores

    def _model(self, cell: Cell) -> DualEncoder:
        key = (cell.model, cell.pretrained)
        if key not in self._models:
            self._models = {key: load_model(cell.model, cell.pretrained, self.device)}  # one model in memory
        return self._models[key]

    def _dataset(self, cell: Cell, model: DualEncoder) -> ImageDataset:
        key = (cell.target, cell.model, cell.pretrained, cell.sample)
        if key not in self._datasets:
            dataset = load_target(cell.target, self.data_root, self.n, self.seed, cell.sample)
            dataset.transform = model.preprocess
            self._datasets = {key: dataset}
        return self._datasets[key]

    def write_summary(self, cells: Sequence[Cell]) -> list[dict[str, Any]]:
        """results.json/.csv/.md/.png and intervals.json from the cells finished so far; returns their records."""
        finished = [done for c in cells if (done := self.read_cell(c)) is not None]
        records = [record for record, _ in finished]
        scores = [cell_scores for _, cell_scores in finished]
        write_json(self.out / "results.json", records)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*RECORD_KEYS, "epochs"], lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.out / "results.csv", buf.getvalue())
        found = intervals(records, scores, seed=self.seed)
        write_json(self.out / "intervals.json", [row.as_dict() for row in found])
        atomic_write_text(self.out / "results.md", markdown(records, found))
        if records:
            plot(records, found, self.out / "results.png")
        return records


def load_target(target: str, data_root: str | None, n: int | None, seed: int, sample: int = 0) -> ImageDataset:
    """Sample ``sample`` (``n`` images) of an offline target (generated on first use; ``data_root``:
    the Fashion-MNIST IDX folder), a benchmark (read from ``data_root/<name>``, default the data
    home) or a dataset path. Samples of one target are disjoint."""
    if is_offline_target(target):
        return offline_targets.load_target(target, n=n or OFFLINE_DEFAULT_N, seed=seed, source_root=data_root,
                                           sample=sample)
    name = canonical_name(target)
    root = Path(data_root) / name if data_root is not None and name is not None else None
    dataset = load_dataset(target, root=root)
    if sample == 0:
        return random_subset(dataset, n, seed) if n else dataset
    return disjoint_subset(dataset, n, seed, sample)


def disjoint_subset(dataset: ImageDataset, n: int | None, seed: int, sample: int) -> ImageDataset:
    """Sample ``sample`` >= 1: ``n`` images drawn by ``(seed, sample)`` from those samples 0..sample-1
    (sample 0 being ``random_subset(dataset, n, seed)``) did not take, in dataset order."""
    if not n:
        raise ReclipError("more than one sample needs a number of images per sample (--n)")
    taken = np.zeros(len(dataset), dtype=bool)
    if n >= len(dataset):
        taken[:] = True
    else:  # the draw of random_subset(dataset, n, seed)
        taken[np.random.default_rng(seed).choice(len(dataset), n, replace=False)] = True
    for s in range(1, sample + 1):
        free = np.flatnonzero(~taken)
        if len(free) < n:
            raise ReclipError(f"{dataset.name}: sample {s} needs {n} images but {len(free)} are left; "
                              "use a smaller --n or fewer --samples")
        chosen = np.sort(np.random.default_rng([seed, s]).choice(free, n, replace=False))
        taken[chosen] = True
    return dataset.subset(chosen)


def is_offline_target(name: str) -> bool:
    """Whether ``name`` names a target built from Fashion-MNIST (``clean``, ``contrast-4``, ...)."""
    try:
        offline_targets.parse_target(name)
    except ReclipError:
        return False
    return True
