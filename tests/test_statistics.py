"""Intervals of the evaluation: known answers and coverage on simulated data."""

import numpy as np
import pytest

from llmauction_sim.statistics import (
    clustered_spearman,
    mean_interval,
    rank,
    ratio_interval,
    spearman,
    wilson,
    within_slope,
)


def test_wilson_known_values() -> None:
    iv = wilson(50, 100)
    assert iv.estimate == 0.5 and iv.low == pytest.approx(0.4038, abs=1e-4)
    assert iv.high == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0
    assert np.isnan(wilson(0, 0).estimate)


def test_mean_interval_covers_the_truth_about_95_percent() -> None:
    rng = np.random.default_rng(0)
    hits = sum(mean_interval(rng.normal(1.0, 2.0, 60), rng, samples=400).contains(1.0)
               for _ in range(200))
    assert 175 <= hits <= 199  # nominal 190 of 200


def test_ratio_interval_is_the_ratio_of_sums() -> None:
    rng = np.random.default_rng(1)
    iv = ratio_interval([1, 0, 2, 1], [2, 1, 2, 1], rng)
    assert iv.estimate == pytest.approx(4 / 6) and iv.low <= 4 / 6 <= iv.high


def test_rank_and_spearman() -> None:
    assert rank([3, 1, 2, 2]).tolist() == [3.0, 0.0, 1.5, 1.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_clustered_spearman_of_independent_data_contains_zero() -> None:
    rng = np.random.default_rng(2)
    x = [rng.random(4) for _ in range(200)]
    y = [rng.random(4) for _ in range(200)]
    iv = clustered_spearman(x, y, rng, samples=300)
    assert iv.contains(0.0) and abs(iv.estimate) < 0.1


def test_within_slope_removes_group_effects() -> None:
    groups = np.repeat(np.arange(5), 4)
    x = np.tile(np.arange(4.0), 5)
    y = 10.0 * groups + 0.3 * x  # group offsets would bias a pooled slope if x varied with them
    assert within_slope(groups, x, y) == pytest.approx(0.3)
    assert np.isnan(within_slope([0, 1], [1.0, 2.0], [3.0, 4.0]))
