"""Intervals for the evaluation's figures: cluster bootstrap over auctions, paired differences,
Wilson intervals for proportions. Pure numpy; every draw comes from the generator passed in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided (1 - alpha) interval."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def wilson(successes: int, trials: int, z: float = 1.96) -> Interval:
    """Wilson score interval of a binomial proportion (NaN with no trials)."""
    if trials <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def bootstrap(statistic: Callable[[np.ndarray], float], clusters: int,
              rng: np.random.Generator, samples: int = BOOTSTRAP_SAMPLES,
              alpha: float = 0.05) -> Interval:
    """Percentile interval of `statistic(index)` over resamples of `clusters` units (auctions)
    with replacement; `statistic(np.arange(clusters))` is the estimate. Resampling whole
    auctions keeps the dependence between an auction's candidates or samples."""
    estimate = float(statistic(np.arange(clusters)))
    if clusters < 2:
        return Interval(estimate, float("nan"), float("nan"))
    draws = np.array([statistic(rng.integers(0, clusters, clusters)) for _ in range(samples)],
                     np.float64)
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return Interval(estimate, float("nan"), float("nan"))
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return Interval(estimate, float(low), float(high))


def mean_interval(values: Sequence[float], rng: np.random.Generator, **kwargs) -> Interval:
    """Bootstrap interval of a mean of per-auction values."""
    x = np.asarray(values, np.float64)
    return bootstrap(lambda i: x[i].mean(), len(x), rng, **kwargs)


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float],
                   rng: np.random.Generator, **kwargs) -> Interval:
    """Bootstrap interval of sum(num) / sum(den) over auctions (e.g. the share of all exposures
    that went to the top-bid candidate)."""
    num, den = np.asarray(numerators, np.float64), np.asarray(denominators, np.float64)

    def stat(i):
        d = den[i].sum()
        return num[i].sum() / d if d > 0 else np.nan
    return bootstrap(stat, len(num), rng, **kwargs)


def rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), 0-based."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (NaN when either side is constant)."""
    rx, ry = rank(np.asarray(x)), rank(np.asarray(y))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def clustered_spearman(x: Sequence[np.ndarray], y: Sequence[np.ndarray],
                       rng: np.random.Generator, **kwargs) -> Interval:
    """Spearman over pooled (x, y) pairs, resampling whole clusters (one auction's candidates)."""
    xs = [np.asarray(a, np.float64) for a in x]
    ys = [np.asarray(a, np.float64) for a in y]
    return bootstrap(lambda i: spearman(np.concatenate([xs[j] for j in i]),
                                        np.concatenate([ys[j] for j in i])), len(xs), rng,
                     **kwargs)


def within_slope(groups: Sequence[int], x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x with a fixed effect per group (the within-group slope)."""
    g = np.asarray(groups)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    _, inverse = np.unique(g, return_inverse=True)
    counts = np.bincount(inverse)
    xc = x - (np.bincount(inverse, weights=x) / counts)[inverse]
    yc = y - (np.bincount(inverse, weights=y) / counts)[inverse]
    denom = float((xc * xc).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else float("nan")
