"""Allocation analysis: ITCTR estimates, the KL-regularised optimum (MOSAIC's selection rule
lives with the mechanism, mechanisms/mosaic.py, and is re-exported here), and the monotonicity /
continuity experiments of the paper (docs/mechanisms.md).

The math is plain numpy; the experiments drive any registered mechanism and any click model with
`probabilities` through their batched interfaces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from llmauction_sim.domain.mentions import net_reward
from llmauction_sim.mechanisms.mosaic import (  # noqa: F401  (MOSAIC's selection math, re-exported)
    mosaic_allocation_curve,
    mosaic_weights,
    softmax,
)
from llmauction_sim.mechanisms.pctr import response_pctr
from llmauction_sim.statistics import spearman  # noqa: F401  (re-exported for notebooks)

# ------------------------------------------------------------------------------------------------
# The KL-regularised optimum over a finite set of answers
# ------------------------------------------------------------------------------------------------


def answer_rewards(bids: np.ndarray, ctr: np.ndarray, exposed: np.ndarray, penalty: np.ndarray,
                   lam: float = 1.0) -> np.ndarray:
    """R_b(y) = sum_i b_i ctr_i(y) 1(i in y) - lam s_resp(y) for answers y (rows): the paper's
    reward (`domain.mentions.paper_reward`) over a finite answer set given as matrices.

    `bids` [ads], `ctr` and `exposed` [answers, ads], `penalty` [answers].
    """
    revenue = (np.asarray(exposed, np.float64) * np.asarray(ctr, np.float64)) @ np.asarray(
        bids, np.float64)
    return net_reward(revenue, np.asarray(penalty, np.float64), lam)


def kl_optimum(log_pi0: np.ndarray, rewards: np.ndarray, beta: float) -> np.ndarray:
    """pi*(y) proportional to pi_0(y) exp(R(y) / beta) over a finite answer set.

    The maximiser of E_pi[R] - beta KL(pi || pi_0) restricted to the set (pi_0 renormalised on
    it). beta -> inf gives pi_0; beta -> 0 puts all mass on argmax R (split evenly on ties).
    """
    log_pi0 = np.asarray(log_pi0, np.float64)
    rewards = np.asarray(rewards, np.float64)
    if beta <= 0:
        best = rewards == rewards.max()
        return best / best.sum()
    return softmax(log_pi0 + rewards / beta)


def itctr_under(pi: np.ndarray, ctr: np.ndarray, exposed: np.ndarray) -> np.ndarray:
    """ITCTR_i = sum_y pi(y) ctr_i(y) 1(i in y) for every ad i (columns)."""
    return np.asarray(pi, np.float64) @ (np.asarray(exposed, np.float64)
                                         * np.asarray(ctr, np.float64))


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int


def mean_ci(values: Sequence[float], z: float = 1.96) -> Estimate:
    """Mean with a normal-approximation confidence interval (z = 1.96: 95%)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    half = z * float(v.std(ddof=1)) / math.sqrt(v.size) if v.size > 1 else math.inf
    return Estimate(m, m - half, m + half, int(v.size))


def violation_rate(values: Sequence[float], tol: float = 0.0) -> float:
    """Share of consecutive (bid-ordered) points where the curve decreases by more than `tol`."""
    v = np.asarray(values, np.float64)
    return float(np.mean(np.diff(v) < -tol)) if v.size > 1 else 0.0


# ------------------------------------------------------------------------------------------------
# Experiments on a mechanism: ITCTR by repeated sampling, bid sweeps
# ------------------------------------------------------------------------------------------------

def with_bid(request, ad_id: str, bid: float):
    """The same auction with one ad's bid changed."""
    return replace(request, bids={**request.bids, ad_id: float(bid)})


def sweep(mechanism, click_model, requests: Sequence, focal: Sequence[str],
          bids: Sequence[float], repeats: int, rng: np.random.Generator) -> pd.DataFrame:
    """Allocate every (request, bid, repeat) in ONE batched call and measure the focal ad.

    Returns one row per (sample, bid, repeat): `exposed` (valid mention of the focal ad),
    `pctr` (click-model probability of the focal ad in the answer, 0 if not exposed; its mean is
    the ITCTR estimate) and `click` (a Bernoulli(pctr) draw, the simulated user's click).
    """
    batch, keys = [], []
    for s, (request, ad_id) in enumerate(zip(requests, focal)):
        for b in bids:
            for rep in range(repeats):
                batch.append(with_bid(request, ad_id, b))
                keys.append((s, request.query_id, ad_id, float(b), rep))
    allocations = mechanism.allocate(batch, rng)
    probs = response_pctr(click_model, batch, allocations)
    rows = []
    draws = rng.random(len(batch))
    for (s, qid, ad_id, b, rep), alloc, p, u in zip(keys, allocations, probs, draws):
        exposed = ad_id in alloc.exposed_ids
        pc = float(p.get(ad_id, 0.0)) if exposed else 0.0
        rows.append({"sample": s, "query_id": qid, "ad_id": ad_id, "bid": b, "repeat": rep,
                     "exposed": exposed, "pctr": pc, "click": int(u < pc),
                     "num_ads": alloc.report.num_ads, "format_errors": alloc.report.num_errors})
    return pd.DataFrame(rows)


def estimate_itctr(mechanism, click_model, request, ad_id: str, samples: int,
                   rng: np.random.Generator) -> Estimate:
    """ITCTR of `ad_id` at fixed query and bids: mean over `samples` answers of
    pctr_i(y) 1(i in y), with a 95% confidence interval."""
    frame = sweep(mechanism, click_model, [request], [ad_id], [request.bids[ad_id]], samples, rng)
    return mean_ci(frame["pctr"])


def curve(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (sample, bid): answers, exposures, clicks, ITCTR estimate and its 95% interval."""
    g = frame.groupby(["sample", "query_id", "ad_id", "bid"], sort=True)
    out = g.agg(answers=("repeat", "size"), exposures=("exposed", "sum"),
                clicks=("click", "sum"), itctr=("pctr", "mean"),
                itctr_sd=("pctr", "std")).reset_index()
    half = 1.96 * out["itctr_sd"].fillna(0.0) / np.sqrt(out["answers"])
    out["itctr_low"], out["itctr_high"] = out["itctr"] - half, out["itctr"] + half
    return out.drop(columns="itctr_sd")


def monotonicity_stats(curves: pd.DataFrame, column: str = "clicks") -> dict:
    """Per-sample Spearman correlation of `column` with the bid, and the violation rate."""
    rhos, viol = [], []
    for _, c in curves.groupby("sample"):
        c = c.sort_values("bid")
        rhos.append(spearman(c["bid"], c[column]))
        viol.append(violation_rate(c[column]))
    valid = [r for r in rhos if not math.isnan(r)]
    return {"samples": len(rhos), "mean_spearman": float(np.mean(valid)) if valid else None,
            "constant_curves": len(rhos) - len(valid),
            "violation_rate": float(np.mean(viol)) if viol else None}
