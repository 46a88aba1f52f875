"""The paired comparison of mechanisms: per-auction metrics from hand-made logs, intervals, and
paired differences on the same auctions."""

import numpy as np
import pandas as pd
import pytest

from llmauction_sim.comparison import AuctionMetrics, compare_logs, comparison_markdown


def log(exposed_per_auction, n=40, revenue=0.0, errors=0) -> pd.DataFrame:
    """n auctions, candidates a..d with bids 10, 20, 30, 90 (d is the top bid), click
    probability 0.5 for every shown ad."""
    rows = []
    for i in range(n):
        exposed = exposed_per_auction(i)
        rows.append({"query_id": f"q{i:03d}", "candidates": ["a", "b", "c", "d"],
                     "bids": {"a": 10.0, "b": 20.0, "c": 30.0, "d": 90.0},
                     "exposed": exposed, "click_probabilities": {x: 0.5 for x in exposed},
                     "revenue": revenue, "format_errors": int(i < errors)})
    return pd.DataFrame(rows)


def test_metrics_from_a_log() -> None:
    m = AuctionMetrics.from_log(log(lambda i: ["d"] if i % 2 else ["a", "b"]))
    assert m.exposures.tolist()[:2] == [2, 1] and m.top_exposed.tolist()[:2] == [0, 1]
    assert m.expected_revenue.tolist()[:2] == [15.0, 45.0]
    assert m.chance.tolist()[:2] == [0.5, 0.25]


def test_expected_revenue_uses_the_price_a_click_costs() -> None:
    """A slot auction charges less than the bid: expected revenue follows its click prices."""
    frame = log(lambda i: ["d"])
    frame["click_prices"] = [{"d": 30.0}] * len(frame)  # GSP: the next score, not the bid 90
    assert AuctionMetrics.from_log(frame).expected_revenue.tolist()[:2] == [15.0, 15.0]


def test_table_and_paired_differences() -> None:
    blind = log(lambda i: [["a", "b", "c", "d"][i % 4]], revenue=5.0, errors=4)
    top = log(lambda i: ["d"], revenue=20.0)
    table, paired = compare_logs({"blind": blind, "top": top}, {"blind": 1, "top": 5}, seed=0)
    by = table.set_index("mechanism")
    assert by.loc["blind", "top_bid_share"] == pytest.approx(0.25)
    assert by.loc["top", "top_bid_share"] == 1.0
    assert by.loc["blind", "bid_blind_top_bid_share"] == pytest.approx(0.25)
    assert by.loc["blind", "expected_revenue_per_query"] == pytest.approx(0.5 * 37.5)
    assert by.loc["top", "expected_revenue_per_generation"] == pytest.approx(45.0 / 5)
    assert by.loc["blind", "format_error_rate"] == pytest.approx(0.1)
    assert by.loc["top", "spearman_exposure_bid"] > 0.7
    assert abs(by.loc["blind", "spearman_exposure_bid"]) < 0.1
    row = paired.set_index("mechanism").loc["top"]
    assert row["d_expected_revenue_per_query"] == pytest.approx(45.0 - 18.75)
    assert row["d_revenue_per_query"] == pytest.approx(15.0)
    assert row["d_top_bid_share_low"] > 0.5
    text = comparison_markdown(table, paired, "blind")
    assert "Paired differences against `blind`" in text and "| top |" in text


def test_intervals_cover_the_truth_under_resampling() -> None:
    rng = np.random.default_rng(0)
    draws = rng.random(240) < 0.4  # the top bid shown in 40% of auctions, one ad each
    data = log(lambda i: ["d"] if draws[i] else ["a"], n=240)
    table, _ = compare_logs({"m": data}, {"m": 1}, seed=1)
    row = table.iloc[0]
    assert row["top_bid_share_low"] < 0.4 < row["top_bid_share_high"]
    assert row["top_bid_share_high"] - row["top_bid_share_low"] < 0.15


def test_other_auctions_are_refused() -> None:
    with pytest.raises(ValueError, match="same seed"):
        compare_logs({"a": log(lambda i: ["a"]), "b": log(lambda i: ["a"], n=39)},
                     {"a": 1, "b": 1}, seed=0)
