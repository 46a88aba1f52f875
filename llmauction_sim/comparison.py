"""Powered, paired comparison of mechanisms on the same test auctions (`llmauction evaluate
--mechanism a,b,c`, the Table 2 and mechanism-comparison scripts).

Every mechanism answers the same test queries with the same candidates and bids (evaluation.py's
seeded streams), so differences are paired per auction. Per mechanism, with 95% intervals from a
bootstrap over auctions:

- `top_bid_share`: the share of all exposures that went to the auction's top-bid candidate,
  against the bid-blind value (each exposure's 1/K);
- `spearman_exposure_bid`: Spearman correlation of a candidate's exposure (0/1) with its bid,
  pooled over candidates and resampled by auction;
- `expected_revenue_per_query`: sum over exposed ads of the price a click costs (`click_prices`:
  the bid under first price per click, the slot price under GSP or VCG; the bid for logs without
  prices) x the judge's click probability: the revenue an auction earns in expectation, free of
  click noise;
- `revenue_per_query` (realised clicks), `ads_per_answer`, `no_ad_rate`, `format_error_rate`;
- per generation: expected revenue divided by the answers a mechanism samples per query (MOSAIC
  samples M and shows one).

Paired differences against the first mechanism (the reference) come with intervals from the same
resampled auctions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from llmauction_sim.manifest import write_json
from llmauction_sim.statistics import Interval, bootstrap, clustered_spearman, wilson
from llmauction_sim.tables import markdown_table

_COMPARE = 17  # seed stream of the bootstrap


@dataclasses.dataclass(frozen=True)
class AuctionMetrics:
    """Per-auction arrays of one mechanism's evaluation log (rows in auction order)."""

    query_ids: list[str]
    exposures: np.ndarray
    top_exposed: np.ndarray  # exposures that went to the top-bid candidate
    chance: np.ndarray  # exposures / K: the top-bid exposures a bid-blind rule expects
    expected_revenue: np.ndarray
    revenue: np.ndarray
    format_error: np.ndarray
    bids: list[np.ndarray]  # per auction, the candidates' bids
    shown: list[np.ndarray]  # per auction, 1.0 where the candidate was exposed

    @classmethod
    def from_log(cls, queries: pd.DataFrame) -> AuctionMetrics:
        queries = queries.sort_values("query_id", kind="stable")
        exposures, top, chance, expected, bids, shown = [], [], [], [], [], []
        prices = (queries["click_prices"] if "click_prices" in queries
                  else queries["bids"])  # logs from before click prices: first price
        for cands, bid_map, price, exposed, probs in zip(
                queries["candidates"], queries["bids"], prices, queries["exposed"],
                queries["click_probabilities"]):
            b = np.array([float(bid_map[c]) for c in cands])
            exposed = list(exposed)
            exposures.append(len(exposed))
            top.append(sum(float(bid_map[a]) == b.max() for a in exposed))
            chance.append(len(exposed) / len(cands))
            expected.append(sum(float(price[a]) * float(probs.get(a, 0.0)) for a in exposed))
            bids.append(b)
            shown.append(np.array([c in exposed for c in cands], float))
        return cls(list(queries["query_id"]), np.array(exposures, float), np.array(top, float),
                   np.array(chance), np.array(expected), queries["revenue"].to_numpy(float),
                   (queries["format_errors"] > 0).to_numpy(float), bids, shown)


def _share(num: np.ndarray, den: np.ndarray):
    def stat(i):
        d = den[i].sum()
        return num[i].sum() / d if d > 0 else np.nan
    return stat


def mechanism_row(name: str, m: AuctionMetrics, generations: float,
                  rng: np.random.Generator) -> dict:
    n = len(m.query_ids)

    def iv(stat) -> Interval:
        return bootstrap(stat, n, rng)

    top = iv(_share(m.top_exposed, m.exposures))
    chance = float(m.chance.sum() / m.exposures.sum()) if m.exposures.sum() else float("nan")
    expected = iv(lambda i: m.expected_revenue[i].mean())
    row = {"mechanism": name, "auctions": n, "generations_per_query": generations}
    for key, value in (
            ("expected_revenue_per_query", expected),
            ("expected_revenue_per_generation", Interval(expected.estimate / generations,
                                                         expected.low / generations,
                                                         expected.high / generations)),
            ("revenue_per_query", iv(lambda i: m.revenue[i].mean())),
            ("top_bid_share", top),
            ("spearman_exposure_bid", clustered_spearman(m.bids, m.shown, rng)),
            ("ads_per_answer", iv(lambda i: m.exposures[i].mean())),
            ("no_ad_rate", wilson(int((m.exposures == 0).sum()), n)),
            ("format_error_rate", wilson(int(m.format_error.sum()), n))):
        row.update({key: value.estimate, f"{key}_low": value.low, f"{key}_high": value.high})
    row["bid_blind_top_bid_share"] = chance
    return row


def paired_row(name: str, m: AuctionMetrics, ref: AuctionMetrics,
               rng: np.random.Generator) -> dict:
    """Differences (mechanism - reference) on the same auctions, with paired intervals."""
    if m.query_ids != ref.query_ids:
        raise ValueError(f"{name} was evaluated on other auctions than the reference; compare "
                         "runs made with the same seed, data and --test-queries")
    n = len(m.query_ids)
    top_m, top_r = _share(m.top_exposed, m.exposures), _share(ref.top_exposed, ref.exposures)
    row = {"mechanism": name}
    for key, stat in (
            ("d_expected_revenue_per_query",
             lambda i: m.expected_revenue[i].mean() - ref.expected_revenue[i].mean()),
            ("d_revenue_per_query", lambda i: m.revenue[i].mean() - ref.revenue[i].mean()),
            ("d_top_bid_share", lambda i: top_m(i) - top_r(i))):
        value = bootstrap(stat, n, rng)
        row.update({key: value.estimate, f"{key}_low": value.low, f"{key}_high": value.high})
    return row


def compare_logs(logs: dict[str, pd.DataFrame], generations: dict[str, float], seed: int
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-mechanism table, paired differences against the first) from evaluation logs."""
    metrics = {name: AuctionMetrics.from_log(q) for name, q in logs.items()}
    names = list(metrics)
    rows = [mechanism_row(n, metrics[n], generations.get(n, 1.0),
                          np.random.default_rng([seed, _COMPARE, i]))
            for i, n in enumerate(names)]
    paired = [paired_row(n, metrics[n], metrics[names[0]],
                         np.random.default_rng([seed, _COMPARE, 100 + i]))
              for i, n in enumerate(names[1:])]
    return pd.DataFrame(rows), pd.DataFrame(paired)


def with_interval(table: pd.DataFrame, columns: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """`table` with each column written as "estimate [low, high]"."""
    out = table.copy()
    for c in columns:
        if c in out:
            out[c] = [f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                      for v, lo, hi in zip(out[c], out[f"{c}_low"], out[f"{c}_high"])]
    return out


MAIN_COLUMNS = ["expected_revenue_per_query", "revenue_per_query", "top_bid_share",
                "spearman_exposure_bid", "ads_per_answer", "format_error_rate",
                "expected_revenue_per_generation"]
PAIRED_COLUMNS = ["d_expected_revenue_per_query", "d_revenue_per_query", "d_top_bid_share"]


def comparison_markdown(table: pd.DataFrame, paired: pd.DataFrame, reference: str) -> str:
    main = with_interval(table, MAIN_COLUMNS, 2)
    main = main[["mechanism", "auctions", *MAIN_COLUMNS, "bid_blind_top_bid_share",
                 "generations_per_query"]]
    text = markdown_table(main)
    if len(paired):
        text += (f"\n\nPaired differences against `{reference}` (same auctions, bids and "
                 "click model; 95% bootstrap intervals over auctions):\n\n"
                 + markdown_table(with_interval(paired, PAIRED_COLUMNS, 2)
                                  [["mechanism", *PAIRED_COLUMNS]]))
    return text


def write_comparison(out: Path, logs: dict[str, pd.DataFrame], generations: dict[str, float],
                     seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    table, paired = compare_logs(logs, generations, seed)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    paired.to_csv(out / "paired.csv", index=False)
    (out / "comparison.md").write_text(comparison_markdown(table, paired, next(iter(logs)))
                                       + "\n")
    write_json(out / "comparison.json", {"mechanisms": table.to_dict("records"),
                                         "paired": paired.to_dict("records")})
    return table, paired
