"""Paired bootstrap intervals for bench results.

Two methods scored on the same images give, per image, a difference of scores (for top-1:
correct or not, so -1, 0 or 1). The statistic is the mean over strata (a target's samples,
or every (target, sample) cell for the suite mean) of each stratum's mean difference, the
same average the tables show. The bootstrap resamples images with replacement within each
stratum (a stratified bootstrap), recomputes the statistic, and reports the percentile
interval. Every comparison uses the same resampled images (the generator is seeded per
call with the same seed), so intervals of different pairs come from the same draws.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ReclipError

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """``estimate`` with its bootstrap interval [``low``, ``high``] at ``level``."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL

    @property
    def verdict(self) -> str:
        """``win`` (interval above 0), ``loss`` (below 0) or ``within noise`` (it contains 0)."""
        if self.low > 0:
            return "win"
        if self.high < 0:
            return "loss"
        return "within noise"

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "verdict": self.verdict}


def bootstrap_means(values: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(B,) means of ``values`` (n,) over B resamples of its entries with replacement.

    The resampled positions depend only on ``(seed, n)``: two methods scored on the same n
    images in the same order are resampled identically, so the difference of their
    bootstrap means is the bootstrap of their paired per-image differences.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ReclipError("bootstrap_means needs a non-empty 1-D array of per-image scores")
    if resamples < 1:
        raise ReclipError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng([seed, len(values)])
    return values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)


def stratified_interval(estimates: Sequence[float], boots: Sequence[np.ndarray], *, level: float = LEVEL) -> Interval:
    """Interval of the mean over strata: ``estimates[s]`` is stratum s's statistic, ``boots[s]``
    (B,) its bootstrap replicates (strata resampled independently)."""
    if not estimates or len(estimates) != len(boots):
        raise ReclipError("stratified_interval needs one estimate and one bootstrap array per stratum")
    if not 0 < level < 1:
        raise ReclipError(f"level must be in (0, 1), got {level}")
    total = np.mean(np.stack(boots), axis=0)
    low, high = np.quantile(total, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(np.mean(estimates)), float(low), float(high), level)


def bootstrap_interval(scores: Sequence[np.ndarray], baseline: Sequence[np.ndarray] | None = None, *,
                       resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """Stratified paired bootstrap interval of ``mean_s mean_i (scores[s][i] - baseline[s][i])``.

    Args:
        scores: one (n_s,) array of per-image scores per stratum s.
        baseline: the other method's (n_s,) scores on the same images in the same order; None
            for the interval of ``scores`` alone.
        resamples: bootstrap resamples B.
        level: coverage of the percentile interval.
        seed: the resampling seed (with each stratum's size, see :func:`bootstrap_means`).

    Returns:
        :class:`Interval` (the estimate is the statistic on the data itself).
    """
    if not scores or (baseline is not None and len(baseline) != len(scores)):
        raise ReclipError("bootstrap_interval needs one score array per stratum for both methods")
    estimates, boots = [], []
    for s, values in enumerate(scores):
        values = np.asarray(values, dtype=np.float64)
        boot = bootstrap_means(values, resamples=resamples, seed=seed)
        estimate = values.mean()
        if baseline is not None:
            other = np.asarray(baseline[s], dtype=np.float64)
            if other.shape != values.shape:
                raise ReclipError(f"stratum {s}: the two methods scored different images "
                                  f"({len(values)} vs {len(other)})")
            boot = boot - bootstrap_means(other, resamples=resamples, seed=seed)
            estimate -= other.mean()
        estimates.append(estimate)
        boots.append(boot)
    return stratified_interval(estimates, boots, level=level)
