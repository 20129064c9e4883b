"""``reclip bench`` as a library: cells, the runner, the offline targets and paired statistics.

- :mod:`reclip.bench.runner`: ``Cell``, ``make_cells``, the suites and ``Bench(out).run(cells)``;
- :mod:`reclip.bench.targets`: the offline (TEST split) and dev (TRAIN split) targets built from
  Fashion-MNIST, with disjoint samples;
- :mod:`reclip.bench.stats`: the paired, stratified bootstrap;
- :mod:`reclip.bench.tables`: per-image predictions, intervals, results.md and results.png.
"""
from .runner import (DEFAULT_METHODS, METHODS, OFFLINE_DEFAULT_N, OFFLINE_MODELS, OFFLINE_SAMPLES,
                     PAPER_BENCHMARKS, Bench, BenchWarning, Cell, disjoint_subset, is_offline_target, load_target,
                     make_cells, offline_suite, paper_suite, parse_model)
from .stats import Interval, bootstrap_interval, bootstrap_means, stratified_interval
from .tables import CellScores, Row, intervals, markdown, plot
from .targets import DEV_TARGETS, HARD_DEV_TARGETS, OFFLINE_TARGETS, ensure_target, parse_target

__all__ = [
    "DEFAULT_METHODS", "METHODS", "OFFLINE_DEFAULT_N", "OFFLINE_MODELS", "OFFLINE_SAMPLES", "PAPER_BENCHMARKS",
    "Bench", "BenchWarning", "Cell", "disjoint_subset", "is_offline_target", "load_target", "make_cells",
    "offline_suite", "paper_suite", "parse_model", "Interval", "bootstrap_interval", "bootstrap_means",
    "stratified_interval", "CellScores", "Row", "intervals", "markdown", "plot", "DEV_TARGETS",
    "HARD_DEV_TARGETS", "OFFLINE_TARGETS", "ensure_target", "parse_target",
]
