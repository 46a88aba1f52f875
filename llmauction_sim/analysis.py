"""Allocation analysis: ITCTR estimates, the KL-regularised optimum, MOSAIC's selection rule, and
the monotonicity / continuity experiments of the paper (docs/mechanisms.md).

The math is plain numpy; the experiments drive any registered mechanism and any click model with
`probabilities` through their batched interfaces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

# ------------------------------------------------------------------------------------------------
# The KL-regularised optimum and MOSAIC's selection over a finite set of answers
# ------------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - np.max(z)
    e = np.exp(z)
    return e / e.sum()


def answer_rewards(bids: np.ndarray, ctr: np.ndarray, exposed: np.ndarray, penalty: np.ndarray,
                   lam: float = 1.0) -> np.ndarray:
    """R_b(y) = sum_i b_i ctr_i(y) 1(i in y) - lam s_resp(y) for answers y (rows).

    `bids` [ads], `ctr` and `exposed` [answers, ads], `penalty` [answers].
    """
    return (np.asarray(exposed, np.float64) * np.asarray(ctr, np.float64)) @ np.asarray(
        bids, np.float64) - lam * np.asarray(penalty, np.float64)


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


def mosaic_weights(rewards: np.ndarray, tau: float, log_ref: np.ndarray | None = None,
                   log_proposal: np.ndarray | None = None) -> np.ndarray:
    """Self-normalised importance weights of M sampled answers for the target pi_ref e^{R/tau}.

    With answers y_1..y_M drawn from a proposal q, the target p*(y) proportional to
    pi_ref(y) exp(R(y)/tau) is approximated by the weighted sample with
    w_j proportional to p*(y_j) / q(y_j) = exp(R(y_j)/tau + log pi_ref(y_j) - log q(y_j)).
    When the answers are drawn from pi_ref itself (q = pi_ref) the ratio is 1 and the weights are
    softmax(R/tau) over the samples; that is the default (both log arguments None).
    Selecting y_j with probability w_j converges to p* as M grows (self-normalised importance
    sampling is consistent).
    """
    logits = np.asarray(rewards, np.float64) / float(tau)
    if log_ref is not None:
        logits = logits + np.asarray(log_ref, np.float64)
    if log_proposal is not None:
        logits = logits - np.asarray(log_proposal, np.float64)
    return softmax(logits)


def mosaic_allocation_curve(rewards: np.ndarray, ctr_i: np.ndarray, bid_i: float, tau: float,
                            grid: np.ndarray, log_ratio: np.ndarray | None = None) -> np.ndarray:
    """Expected ITCTR of ad i as its bid moves over `grid`, the samples held fixed.

    Rewards are linear in b_i: R_j(z) = R_j + (z - b_i) ctr_ij (ctr_ij = 0 where i is not in y_j),
    so x_i(z) = sum_j w_j(z) ctr_ij is non-decreasing in z: the selection is monotone, and the
    Myerson payment of this curve is MOSAIC's Rochet-style payment for the given samples.
    """
    ctr_i = np.asarray(ctr_i, np.float64)
    base = np.asarray(rewards, np.float64) - bid_i * ctr_i
    logits = (base[None, :] + np.asarray(grid, np.float64)[:, None] * ctr_i[None, :]) / tau
    if log_ratio is not None:
        logits = logits + np.asarray(log_ratio, np.float64)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    return w @ ctr_i


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


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks on ties); nan when either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    if np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


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
    from llmauction_sim.mechanisms.pctr import response_pctr

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
