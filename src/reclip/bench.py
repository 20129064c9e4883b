"""``reclip bench``: every label-free method side by side on many targets.

A bench is a list of cells (target x model x method). Each cell is one
``ReCLIP(model, ReclipConfig(**METHODS[method])).fit(target)``; its record is written to
``out/cells/<key>.json`` when it finishes, so an interrupted bench rerun continues with
the missing cells (and a training cell continues from its last epoch's checkpoint in
``out/runs/<key>``). Features are extracted once per (target, model): the feature cache
serves every later cell of the pair. After every cell the summary files are rewritten:
``results.json`` / ``results.csv`` (one record per cell, CLIP_benchmark's key names where
they overlap), ``results.md`` (tables with a mean row) and ``results.png`` (grouped bars).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .data.benchmarks import canonical_name
from .data.datasets import ImageDataset, load_dataset
from .data.sampling import random_subset
from .errors import ReclipError
from .io import atomic_path, atomic_write_text, output_folder, write_json
from .method.config import ReclipConfig
from .method.run import ReCLIP
from .models.base import DualEncoder
from .models.factory import load_model

METHODS: dict[str, dict[str, Any]] = {
    "zero-shot": {"mode": "zero-shot"},
    "transductive": {"mode": "transductive"},
    "transclip": {"mode": "transclip"},
    "reclip": {"mode": "reclip"},
    "v-only": {"mode": "v-only"},
    "t-only": {"mode": "t-only"},
    "reclip-v-frozen": {"mode": "reclip", "v_tower": "frozen"},
    "reclip-v-train": {"mode": "reclip", "v_tower": "train"},
    "reclip-v-text": {"mode": "reclip", "v_graph": "text"},
}
DEFAULT_METHODS = ("zero-shot", "transductive", "transclip", "reclip")
PAPER_BENCHMARKS = ("cifar10", "cifar100", "imagenet", "caltech101", "dtd", "eurosat", "fgvc_aircraft", "food101",
                    "flowers102", "oxford_pets", "stanford_cars", "sun397", "mnist", "gtsrb", "stl10", "country211",
                    "pcam", "renderedsst2", "birdsnap", "fer2013", "resisc45", "aid")
# the paper's averages over its 22 benchmarks, CLIP ViT-L/14 (top-1 %)
PAPER_AVERAGE = {"zero-shot": 69.83, "reclip": 74.94}
METRICS = ("acc1", "acc5", "mean_per_class_recall", "ece")
RECORD_KEYS = ("dataset", "model", "pretrained", "method", "n", *METRICS, "seconds")
OFFLINE_DEFAULT_N = 2000


@dataclass(frozen=True)
class Cell:
    """One measurement: ``method`` (a key of METHODS) with ``model``/``pretrained`` on ``target``
    (an offline target name, a benchmark name or a dataset path)."""

    target: str
    model: str
    pretrained: str | None
    method: str

    @property
    def key(self) -> str:
        parts = (self.target, self.model, self.pretrained or "-", self.method)
        return "__".join("".join(c if c.isalnum() or c in "-._" else "_" for c in p) for p in parts)


def parse_model(text: str) -> tuple[str, str | None]:
    """``"ViT-L-14@openai"`` -> ("ViT-L-14", "openai"); ``"bridge"`` -> ("bridge", None)."""
    spec, _, pretrained = text.partition("@")
    return spec, pretrained or None


def make_cells(targets: Sequence[str], models: Sequence[str], methods: Sequence[str]) -> list[Cell]:
    """Every (target, model, method) combination, in that nesting order."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ReclipError(f"methods: unknown {', '.join(unknown)}; use any of {', '.join(METHODS)}")
    if not targets or not models or not methods:
        raise ReclipError("a bench needs at least one target, one model and one method")
    return [Cell(t, *parse_model(m), method) for t in targets for m in models for method in methods]


def offline_suite(methods: Sequence[str] = DEFAULT_METHODS) -> list[Cell]:
    """The bridge model on every offline target built from Fashion-MNIST test images."""
    from .data.targets import OFFLINE_TARGETS

    return make_cells(list(OFFLINE_TARGETS), ["bridge"], methods)


def paper_suite(methods: Sequence[str] = ("zero-shot", "reclip"), models: Sequence[str] = ("ViT-L-14@openai",),
                targets: Sequence[str] = PAPER_BENCHMARKS) -> list[Cell]:
    """The paper's 22 benchmarks with CLIP ViT-L/14 (OpenAI weights)."""
    return make_cells(targets, models, methods)


class Bench:
    """Runs cells into ``out`` (see the module docstring); ``n`` images per target (None: all)."""

    def __init__(self, out: str | Path, *, n: int | None = 2000, data_root: str | None = None, seed: int = 0,
                 device: str | None = None, workers: int | None = None, callbacks: Sequence[Callback] = ()) -> None:
        self.out = Path(out)
        self.n, self.data_root, self.seed, self.device, self.workers = n, data_root, seed, device, workers
        self.callbacks = list(callbacks)
        self._models: dict[tuple[str, str | None], DualEncoder] = {}
        self._datasets: dict[tuple[str, str, str | None], ImageDataset] = {}

    def run(self, cells: Iterable[Cell]) -> list[dict[str, Any]]:
        """Run the cells not yet recorded; returns the records of all of ``cells``."""
        cells = list(cells)
        with output_folder(self.out):
            for i, cell in enumerate(cells):
                if self.record_path(cell).is_file():
                    continue
                print(f"bench cell {i + 1}/{len(cells)}: {cell.method} / {cell.model} / {cell.target}", flush=True)
                record = self.run_cell(cell)
                write_json(self.record_path(cell), record)
                self.write_summary(cells)
            records = self.write_summary(cells)
        return records

    def record_path(self, cell: Cell) -> Path:
        return self.out / "cells" / f"{cell.key}.json"

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        model = self._model(cell)
        dataset = self._dataset(cell, model)
        config = ReclipConfig(**METHODS[cell.method], seed=self.seed, workers=self.workers)
        trains = config.trains
        run_dir = self.out / "runs" / cell.key
        result = ReCLIP(model, config).fit(dataset, out=run_dir if trains else None,
                                           resume=trains and run_dir.is_dir(), callbacks=self.callbacks)
        final = result.metrics["final"]
        record = {"dataset": cell.target, "model": cell.model, "pretrained": cell.pretrained, "method": cell.method,
                  "n": result.metrics["n"], "acc1": final.get("top1"), "acc5": final.get("top5"),
                  "mean_per_class_recall": final.get("mean_per_class_recall"), "ece": final.get("ece"),
                  "seconds": result.metrics["seconds"]}
        if result.history:
            record["epochs"] = len(result.history)
        return record

    def _model(self, cell: Cell) -> DualEncoder:
        key = (cell.model, cell.pretrained)
        if key not in self._models:
            self._models = {key: load_model(cell.model, cell.pretrained, self.device)}  # one model in memory
        return self._models[key]

    def _dataset(self, cell: Cell, model: DualEncoder) -> ImageDataset:
        key = (cell.target, cell.model, cell.pretrained)
        if key not in self._datasets:
            dataset = load_target(cell.target, self.data_root, self.n, self.seed)
            dataset.transform = model.preprocess
            self._datasets = {key: dataset}
        return self._datasets[key]

    def write_summary(self, cells: Sequence[Cell]) -> list[dict[str, Any]]:
        """results.json/.csv/.md/.png from the records written so far; returns them."""
        records = [json.loads(self.record_path(c).read_text()) for c in cells if self.record_path(c).is_file()]
        write_json(self.out / "results.json", records)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*RECORD_KEYS, "epochs"], lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
        atomic_write_text(self.out / "results.csv", buf.getvalue())
        atomic_write_text(self.out / "results.md", markdown(records))
        if records:
            plot(records, self.out / "results.png")
        return records


def load_target(target: str, data_root: str | None, n: int | None, seed: int) -> ImageDataset:
    """An offline target (generated on first use; ``data_root``: the Fashion-MNIST IDX folder), a
    benchmark (read from ``data_root/<name>``, default the data home) or a dataset path; ``n`` images."""
    from .data import targets

    if is_offline_target(target):
        return targets.load_target(target, n=n or OFFLINE_DEFAULT_N, seed=seed, source_root=data_root)
    name = canonical_name(target)
    root = Path(data_root) / name if data_root is not None and name is not None else None
    dataset = load_dataset(target, root=root)
    return random_subset(dataset, n, seed) if n else dataset


def is_offline_target(name: str) -> bool:
    """Whether ``name`` names a target built from Fashion-MNIST (``clean``, ``contrast-4``, ...)."""
    from .data import targets

    try:
        targets.parse_target(name)
    except ReclipError:
        return False
    return True


def _table(records: list[dict], metric: str, scale: float, digits: int) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in records))
    rows = list(dict.fromkeys((r["dataset"], r["model"]) for r in records))
    value = {(r["dataset"], r["model"], r["method"]): r.get(metric) for r in records}
    lines = ["| target | model | " + " | ".join(methods) + " |", "| --- | --- |" + " --- |" * len(methods)]

    def fmt(v: float | None) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.{digits}f}"

    for dataset, model in rows:
        lines.append(f"| {dataset} | {model} | " + " | ".join(fmt(value.get((dataset, model, m))) for m in methods)
                     + " |")
    means = []
    for m in methods:
        vals = [value.get((d, mo, m)) for d, mo in rows]
        means.append(fmt(sum(vals) / len(vals)) if vals and all(v is not None for v in vals) else "-")
    lines.append("| **mean** | | " + " | ".join(f"**{v}**" for v in means) + " |")
    return lines


def markdown(records: list[dict]) -> str:
    """Top-1, mean per-class recall, ECE and seconds tables (targets x methods), each with a mean row."""
    if not records:
        return "No cell has finished yet.\n"
    parts = []
    for metric, title, scale, digits in (("acc1", "Top-1 (%)", 100, 2),
                                         ("mean_per_class_recall", "Mean per-class recall (%)", 100, 2),
                                         ("ece", "Expected calibration error (15 bins)", 1, 3),
                                         ("seconds", "Seconds per cell", 1, 0)):
        parts += [f"## {title}", "", *_table(records, metric, scale, digits), ""]
    if any(r["model"] == "ViT-L-14" and r["pretrained"] == "openai" for r in records):
        parts += ["The paper (CLIP ViT-L/14, average of its 22 benchmarks): zero-shot "
                  f"{PAPER_AVERAGE['zero-shot']}, ReCLIP {PAPER_AVERAGE['reclip']}.", ""]
    return "\n".join(parts)


def plot(records: list[dict], path: Path) -> None:
    """Grouped bars: top-1 per target, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in records))
    targets = list(dict.fromkeys(f"{r['dataset']}\n{r['model']}" for r in records))
    value = {(f"{r['dataset']}\n{r['model']}", r["method"]): r.get("acc1") for r in records}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(targets) * max(1, len(methods)) / 3), 4.5))
    for j, method in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(targets))]
        ys = [100 * (value.get((t, method)) or 0) for t in targets]
        ax.bar(xs, ys, width, label=method)
    ax.set_xticks(range(len(targets)), targets, fontsize=8)
    ax.set(ylabel="top-1 (%)", title="label-free methods, side by side")
    ax.legend(fontsize=8, ncols=min(4, len(methods)))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
