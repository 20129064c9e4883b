"""A bench's per-image predictions, its paired intervals, ``results.md`` and ``results.png``.

Rows are (target, model); a target's numbers average its samples, and each model gets a mean
row over its targets. Intervals (:mod:`reclip.bench.stats`) are 95% paired bootstrap
intervals of top-1: of each method's accuracy, of every method minus zero-shot and of
reclip minus every other method, stratified by sample for a target and by (target, sample)
for the mean, over the (target, sample) cells that every method has finished. A difference is a ``win`` when its interval lies above 0, a ``loss`` below 0,
``within noise`` otherwise.
"""
from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_path
from .stats import RESAMPLES, Interval, bootstrap_means, stratified_interval

MEAN = "mean"
BASELINE = "zero-shot"
FOCUS = "reclip"
# the paper's averages over its 22 benchmarks, CLIP ViT-L/14 (top-1 %)
PAPER_AVERAGE = {"zero-shot": 69.83, "reclip": 74.94}


@dataclass
class CellScores:
    """Per-image predictions of one cell: dataset ``index``, true ``label`` (-1 unknown), predicted
    class ``pred`` and its ``confidence`` (all (N,)); stored compactly in a ``.npz`` file."""

    index: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    confidence: np.ndarray
    _boot: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def correct(self) -> np.ndarray:
        """(N,) 1.0 where the prediction is right, over the images with a known label."""
        known = self.label >= 0
        return (self.pred[known] == self.label[known]).astype(np.float64)

    def bootstrap(self, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
        """(B,) bootstrap means of :attr:`correct` (computed once per object)."""
        if (resamples, seed) not in self._boot:
            self._boot[(resamples, seed)] = bootstrap_means(self.correct, resamples=resamples, seed=seed)
        return self._boot[(resamples, seed)]

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, index=self.index.astype(np.int32), label=self.label.astype(np.int16),
                                pred=self.pred.astype(np.int16), confidence=self.confidence.astype(np.float16))

    @classmethod
    def load(cls, path: Path) -> "CellScores":
        """Raises OSError (missing) or ValueError (damaged, empty or inconsistent)."""
        try:
            with open(path, "rb") as f, np.load(f) as data:
                arrays = {k: data[k] for k in ("index", "label", "pred", "confidence")}
        except (zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise ValueError(f"{path} is not a complete predictions file ({exc})") from None
        if len({len(a) for a in arrays.values()}) != 1 or any(a.ndim != 1 for a in arrays.values()):
            raise ValueError(f"{path}: its arrays differ in length")
        return cls(index=arrays["index"].astype(np.int64), label=arrays["label"].astype(np.int64),
                   pred=arrays["pred"].astype(np.int64), confidence=arrays["confidence"].astype(np.float32))


@dataclass(frozen=True)
class Row:
    """One interval: ``method`` (minus ``baseline``, when given) on ``target`` (or ``"mean"``) with
    ``model``, from ``strata`` (target, sample) cells holding ``n`` images in all."""

    model: str
    target: str
    method: str
    baseline: str | None
    interval: Interval
    strata: int
    n: int

    def as_dict(self) -> dict:
        return {"model": self.model, "target": self.target, "method": self.method, "baseline": self.baseline,
                "strata": self.strata, "n": self.n, **self.interval.as_dict()}


def model_name(record: dict) -> str:
    return record["model"] + (f"@{record['pretrained']}" if record.get("pretrained") else "")


def comparisons(methods: Sequence[str]) -> list[tuple[str, str | None]]:
    """(method, baseline) pairs: each method alone, each minus zero-shot, reclip minus each other."""
    pairs: list[tuple[str, str | None]] = [(m, None) for m in methods]
    if BASELINE in methods:
        pairs += [(m, BASELINE) for m in methods if m != BASELINE]
    if FOCUS in methods:
        pairs += [(FOCUS, m) for m in methods if m not in (FOCUS, BASELINE)]
    return pairs


def intervals(records: Sequence[dict], scores: Sequence[CellScores], *, resamples: int = RESAMPLES,
              seed: int = 0) -> list[Row]:
    """Every interval of the bench (see the module docstring); ``scores[i]`` belongs to ``records[i]``."""
    cells = {(model_name(r), r["dataset"], r["method"], r.get("sample", 0)): s for r, s in zip(records, scores)}
    methods = list(dict.fromkeys(r["method"] for r in records))
    rows = []
    for model in dict.fromkeys(model_name(r) for r in records):
        targets = list(dict.fromkeys(r["dataset"] for r in records if model_name(r) == model))
        samples = sorted({r.get("sample", 0) for r in records if model_name(r) == model})
        # only (target, sample) cells that every method has finished, so all rows average the same images
        complete = [(t, s) for t in targets for s in samples if all((model, t, m, s) in cells for m in methods)]
        for target in [*targets, MEAN]:
            strata = [(t, s) for t, s in complete if target in (MEAN, t)]
            for method, baseline in comparisons(methods):
                pairs = [(cells[(model, t, method, s)], cells.get((model, t, baseline, s)) if baseline else None)
                         for t, s in strata if (model, t, method, s) in cells
                         and (baseline is None or (model, t, baseline, s) in cells)]
                pairs = [(a, b) for a, b in pairs if len(a.correct) and (b is None or _paired(a, b))]
                if not pairs:
                    continue
                estimates = [a.correct.mean() - (b.correct.mean() if b is not None else 0.0) for a, b in pairs]
                boots = [a.bootstrap(resamples, seed) - (b.bootstrap(resamples, seed) if b is not None else 0.0)
                         for a, b in pairs]
                rows.append(Row(model, target, method, baseline, stratified_interval(estimates, boots),
                                len(pairs), sum(len(a.correct) for a, _ in pairs)))
    return rows


def _paired(a: CellScores, b: CellScores) -> bool:
    """Whether two cells scored the same images in the same order."""
    return np.array_equal(a.index, b.index) and np.array_equal(a.label, b.label)


# --- results.md ---------------------------------------------------------------------------

def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _fmt(v: float | None, scale: float, digits: int) -> str:
    return "-" if v is None else f"{scale * v:.{digits}f}"


def _layout(records: Sequence[dict]) -> tuple[list[str], list[tuple[str, str]]]:
    methods = list(dict.fromkeys(r["method"] for r in records))
    rows = list(dict.fromkeys((r["dataset"], model_name(r)) for r in records))
    return methods, rows


def _plain_table(records: Sequence[dict], metric: str, scale: float, digits: int) -> list[str]:
    """Targets x methods, each value the mean over samples; a mean row per model over its targets."""
    methods, rows = _layout(records)
    value = {}
    for r in records:
        value.setdefault((r["dataset"], model_name(r), r["method"]), []).append(r.get(metric))
    lines = ["| target | model | " + " | ".join(methods) + " |", "| --- | --- |" + " --- |" * len(methods)]
    for dataset, model in rows:
        lines.append(f"| {dataset} | {model} | "
                     + " | ".join(_fmt(_mean(value.get((dataset, model, m), [])), scale, digits) for m in methods)
                     + " |")
    for model in dict.fromkeys(m for _, m in rows):
        means = []
        for m in methods:
            per_target = [_mean(value.get((d, mo, m), [])) for d, mo in rows if mo == model]
            means.append(_fmt(_mean(per_target), scale, digits) if all(v is not None for v in per_target) else "-")
        lines.append(f"| **mean** | {model} | " + " | ".join(f"**{v}**" for v in means) + " |")
    return lines


def _interval_tables(records: Sequence[dict], rows_found: Sequence[Row]) -> list[str]:
    methods, rows = _layout(records)
    found = {(r.model, r.target, r.method, r.baseline): r for r in rows_found}
    n = {(r.model, r.target): r.n for r in rows_found if r.baseline is None}
    lines = ["## Top-1 (%): mean over samples ± half its 95% paired bootstrap interval", "",
             "| target | model | n | " + " | ".join(methods) + " |", "| --- | --- | --- |" + " --- |" * len(methods)]
    targets = [*rows, *((MEAN, model) for model in dict.fromkeys(m for _, m in rows))]
    for dataset, model in targets:
        cells = []
        for m in methods:
            row = found.get((model, dataset, m, None))
            cells.append("-" if row is None else
                         f"{100 * row.interval.estimate:.2f} ± {50 * (row.interval.high - row.interval.low):.2f}")
        name = f"**{dataset}**" if dataset == MEAN else dataset
        lines.append(f"| {name} | {model} | {n.get((model, dataset), '-')} | " + " | ".join(cells) + " |")
    pairs = [(m, b) for m, b in comparisons(methods) if b is not None]
    if pairs:
        lines += ["", "## Paired differences in top-1 (points, 95% bootstrap interval; win / loss / within noise)",
                  "", "| target | model | " + " | ".join(f"{m} − {b}" for m, b in pairs) + " |",
                  "| --- | --- |" + " --- |" * len(pairs)]
        for dataset, model in targets:
            cells = []
            for m, b in pairs:
                row = found.get((model, dataset, m, b))
                if row is None:
                    cells.append("-")
                    continue
                i = row.interval
                verdict = {"win": "**win**", "loss": "**loss**"}.get(i.verdict, "within noise")
                cells.append(f"{100 * i.estimate:+.2f} [{100 * i.low:+.2f}, {100 * i.high:+.2f}] {verdict}")
            name = f"**{dataset}**" if dataset == MEAN else dataset
            lines.append(f"| {name} | {model} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(records: Sequence[dict], rows: Sequence[Row] = ()) -> str:
    """Top-1 with intervals and the paired differences (when ``rows`` are given), then mean per-class
    recall, ECE and seconds tables (targets x methods, mean over samples, a mean row per model)."""
    if not records:
        return "No cell has finished yet.\n"
    samples = sorted({r.get("sample", 0) for r in records})
    parts = [f"Samples per target: {len(samples)} (disjoint image sets); intervals resample images "
             "(stratified by sample, and by target for the mean).", ""]
    parts += _interval_tables(records, rows) if rows else []
    fell_back = [r for r in records if r.get("fell_back")]
    if fell_back:
        parts += ["The safeguard fell back to zero-shot on: "
                  + ", ".join(f"{r['method']} / {r['dataset']} / {model_name(r)} / sample {r.get('sample', 0)}"
                              for r in fell_back) + ".", ""]
    for metric, title, scale, digits in (("acc1", "Top-1 (%)", 100, 2),
                                         ("mean_per_class_recall", "Mean per-class recall (%)", 100, 2),
                                         ("ece", "Expected calibration error (15 bins)", 1, 3),
                                         ("seconds", "Seconds per cell", 1, 0)):
        if metric == "acc1" and rows:
            continue
        parts += [f"## {title}", "", *_plain_table(records, metric, scale, digits), ""]
    if any(r["model"] == "ViT-L-14" and r.get("pretrained") == "openai" for r in records):
        parts += ["The paper (CLIP ViT-L/14, average of its 22 benchmarks): zero-shot "
                  f"{PAPER_AVERAGE['zero-shot']}, ReCLIP {PAPER_AVERAGE['reclip']}.", ""]
    return "\n".join(parts)


# --- results.png --------------------------------------------------------------------------

def plot(records: Sequence[dict], rows: Sequence[Row], path: Path) -> None:
    """Per model: top-1 per target and the mean (bars with 95% interval error bars, n under each
    group, hatched reclip bars where the safeguard fell back to zero-shot in some sample) and ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, _ = _layout(records)
    models = list(dict.fromkeys(model_name(r) for r in records))
    found = {(r.model, r.target, r.method): r for r in rows if r.baseline is None}
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(len(models), 2, squeeze=False, gridspec_kw={"width_ratios": [3, 1]},
                             figsize=(14, 4.2 * len(models)))
    for (ax, ax_ece), model in zip(axes, models):
        mine = [r for r in records if model_name(r) == model]
        targets = list(dict.fromkeys(r["dataset"] for r in mine))
        groups = [*targets, MEAN]
        for j, method in enumerate(methods):
            xs = np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width
            ys, errors, hatches = [], [[], []], []
            for target in groups:
                cell = [r for r in mine if r["method"] == method and (target == MEAN or r["dataset"] == target)]
                row = found.get((model, target, method))
                y = 100 * row.interval.estimate if row is not None else 100 * (_mean([r.get("acc1") for r in cell]) or 0)
                ys.append(y)
                errors[0].append(y - 100 * row.interval.low if row is not None else 0)
                errors[1].append(100 * row.interval.high - y if row is not None else 0)
                hatches.append(sum(bool(r.get("fell_back")) for r in cell))
            bars = ax.bar(xs, ys, width, yerr=errors, capsize=2, label=method, error_kw={"lw": 0.8})
            for bar, count, target in zip(bars, hatches, groups):
                if count:
                    bar.set_hatch("//")
                    total = sum(1 for r in mine if r["method"] == method and (target == MEAN or r["dataset"] == target))
                    ax.annotate(f"zero-shot\n{count}/{total}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=6)
        n = {t: sum(r["n"] for r in mine if r["dataset"] == t and r["method"] == methods[0]) for t in targets}
        n[MEAN] = sum(n.values())
        ax.set_xticks(range(len(groups)), [f"{t}\nn={n[t]}" for t in groups], fontsize=7)
        ax.set_ylim(0, 1.25 * max(100 * (row.interval.high if row else 0) for row in found.values()) + 1)
        ax.set(ylabel="top-1 (%)", title=f"{model}: top-1 with 95% paired bootstrap intervals "
                                        "(hatched: reclip fell back to zero-shot)")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, ncols=len(methods), loc="upper left")
        eces = [_mean([r.get("ece") for r in mine if r["method"] == m]) for m in methods]
        ax_ece.bar(range(len(methods)), [e or 0 for e in eces], color=[f"C{j}" for j in range(len(methods))])
        ax_ece.set_xticks(range(len(methods)), methods, fontsize=7, rotation=30)
        ax_ece.set(ylabel="ECE (15 bins)", title=f"{model}: mean ECE over targets")
        ax_ece.title.set_fontsize(9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
