"""The allocation surrogate: recovery of a known allocation, monotonicity in the own bid, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmauction_sim.market.surrogate import (
    AllocationSurrogate,
    Auctions,
    auctions_from_log,
    surrogate_error,
)

ADS = tuple(f"Ad-{i:04d}" for i in range(20))
EFFECT = np.linspace(-1.0, 1.0, len(ADS))
CLICK = np.linspace(0.1, 0.5, len(ADS))


def synthetic(n: int, seed: int) -> Auctions:
    """Auctions of 5 candidates whose exposure follows a known logistic in the bid share."""
    rng = np.random.default_rng(seed)
    ads = np.stack([rng.choice(len(ADS), 5, replace=False) for _ in range(n)])
    bids = rng.integers(1, 101, ads.shape).astype(float)
    share = bids / bids.sum(axis=1, keepdims=True)
    logit = -1.5 + 6.0 * share - 0.3 * np.arange(5) + EFFECT[ads]
    exposed = (rng.random(ads.shape) < 1 / (1 + np.exp(-logit))).astype(float)
    prob = np.where(exposed > 0, CLICK[ads], np.nan)
    return Auctions(ADS, ads, bids, exposed, prob)


def test_recovers_a_known_allocation_and_beats_the_base_rate() -> None:
    surrogate = AllocationSurrogate(len(ADS)).fit(synthetic(4000, 0))
    fresh = synthetic(2000, 1)
    err = surrogate_error(surrogate, fresh)
    assert err["brier"] < 0.9 * err["brier_base_rate"]
    assert err["calibration_mae"] < 0.03
    assert abs(err["predicted_itctr"] - err["observed_itctr"]) < 0.01
    np.testing.assert_allclose(surrogate.click_given_exposed, CLICK, atol=0.03)
    # the true exposure probabilities, against the surrogate's
    share = fresh.bids / fresh.bids.sum(axis=1, keepdims=True)
    truth = 1 / (1 + np.exp(-(-1.5 + 6.0 * share - 0.3 * np.arange(5) + EFFECT[fresh.ads])))
    assert np.mean(np.abs(surrogate.exposure(fresh.ads, fresh.bids) - truth)) < 0.05


def test_itctr_never_decreases_in_the_own_bid() -> None:
    surrogate = AllocationSurrogate(len(ADS)).fit(synthetic(1000, 2))
    rng = np.random.default_rng(3)
    for _ in range(50):
        ads = rng.choice(len(ADS), (1, 5), replace=False)
        bids = np.repeat(rng.integers(1, 101, (1, 5)).astype(float), 100, axis=0)
        bids[:, 2] = np.arange(1, 101)
        curve = surrogate.itctr(np.repeat(ads, 100, axis=0), bids)[:, 2]
        assert np.all(np.diff(curve) >= -1e-12)


def test_logs_without_exposures_are_refused() -> None:
    data = synthetic(50, 4)
    none = Auctions(ADS, data.ads, data.bids, np.zeros_like(data.exposed), data.click_prob)
    with pytest.raises(ValueError, match="expose no ad.*--checkpoint"):
        AllocationSurrogate(len(ADS)).fit(none)


def test_auctions_from_a_market_log() -> None:
    log = pd.DataFrame([{"candidates": ["Ad-0003", "Ad-0001"],
                         "bids": {"Ad-0003": 7.0, "Ad-0001": 90.0},
                         "exposed": ["Ad-0001"], "click_probabilities": {"Ad-0001": 0.4}},
                        {"candidates": ["Ad-0002"], "bids": {"Ad-0002": 5.0},
                         "exposed": [], "click_probabilities": {}}])
    a = auctions_from_log(log, ADS)
    # The same log as a plain pd.read_parquet gives it: maps as (key, value) pairs.
    pairs = log.assign(**{c: log[c].map(lambda d: list(d.items()))
                          for c in ("bids", "click_probabilities")})
    b = auctions_from_log(pairs, ADS)
    assert b.bids.tolist() == a.bids.tolist() and b.exposed.tolist() == a.exposed.tolist()
    assert a.ads.tolist() == [[3, 1], [2, -1]]
    assert a.bids.tolist() == [[7.0, 90.0], [5.0, 0.0]]
    assert a.exposed.tolist() == [[0.0, 1.0], [0.0, 0.0]]
    assert a.click_prob[0, 1] == 0.4 and np.isnan(a.click_prob[0, 0])
