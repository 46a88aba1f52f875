"""Allocation surrogate: fast bidding rounds between the market's LLM rounds.

Learning bidders need thousands of rounds; one LLM round costs seconds on a CPU. The surrogate
estimates, from the LLM rounds logged so far, each candidate ad's ITCTR (probability of a click per
auction) as a function of its bid, the other candidates' bids and the auction's context:

    P(exposed) = sigmoid(w_ad + w_rank * rank + a1 * log(1 + b_i) + a2 * b_i / sum_j b_j
                         + c * log(1 + max_{j != i} b_j))
    ITCTR      = P(exposed) * P(click | exposed, ad)

`rank` is the ad's retrieval rank in the auction (relevance), `w_ad` a per-ad intercept (L2
shrunk towards the mean), `P(click | exposed, ad)` the judge's mean click probability of the ad's
exposures (shrunk towards the overall mean). a1 and a2 are kept >= 0 while fitting, so the
surrogate's ITCTR never decreases in the own bid, as the paper's allocation is (Thm 4.3).

A surrogate round replays logged auction contexts (the query's candidates and their order), asks
each candidate's advertiser policy for a bid, draws exposures and clicks from the surrogate, and
charges first price per click; the policies observe the outcomes and update once per round, exactly
as after an LLM round. `surrogate_error` compares the surrogate with fresh LLM rounds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Auctions:
    """Candidate auctions as arrays: `ads[n, k]` (index into `ad_ids`, -1 = no candidate),
    `bids[n, k]`, and, for logged auctions, `exposed[n, k]`, `click_prob[n, k]`."""
    ad_ids: tuple[str, ...]
    ads: np.ndarray
    bids: np.ndarray
    exposed: np.ndarray | None = None
    click_prob: np.ndarray | None = None


def auctions_from_log(log: pd.DataFrame, ad_ids: Sequence[str]) -> Auctions:
    """The auctions of a market or evaluation log (`queries.parquet` rows: candidates, bids,
    exposed, click_probabilities)."""
    index = {a: i for i, a in enumerate(ad_ids)}
    k = max((len(c) for c in log["candidates"]), default=0)
    n = len(log)
    ads = np.full((n, k), -1, dtype=np.int64)
    bids = np.zeros((n, k))
    exposed = np.zeros((n, k))
    prob = np.full((n, k), np.nan)
    for row, (cands, bid_map, shown, probs) in enumerate(zip(
            log["candidates"], log["bids"], log["exposed"], log["click_probabilities"])):
        b, p = dict(bid_map), dict(probs)  # dicts, or the pairs a plain pd.read_parquet gives
        shown = set(shown)
        for j, ad in enumerate(cands):
            ads[row, j] = index[ad]
            bids[row, j] = float(b[ad])
            exposed[row, j] = float(ad in shown)
            if ad in shown:
                prob[row, j] = float(p.get(ad, np.nan))
    return Auctions(tuple(ad_ids), ads, bids, exposed, prob)


def _features(ads: np.ndarray, bids: np.ndarray) -> np.ndarray:
    """Per (auction, candidate): [rank, log1p(bid), bid share, log1p(max other bid)]."""
    valid = ads >= 0
    b = np.where(valid, bids, 0.0)
    total = b.sum(axis=1, keepdims=True)
    share = np.divide(b, total, out=np.zeros_like(b), where=total > 0)
    # max over the others: the top bid, or the second one for the top bidder
    top2 = np.sort(b, axis=1)[:, -2:] if b.shape[1] > 1 else np.concatenate(
        [np.zeros_like(b), b], axis=1)
    first, second = top2[:, -1:], top2[:, :1]
    max_other = np.where(b >= first, second, first)
    rank = np.broadcast_to(np.arange(b.shape[1]), b.shape).astype(float)
    return np.stack([rank, np.log1p(b), share, np.log1p(max_other)], axis=-1)


class AllocationSurrogate:
    """Logistic exposure model with a per-ad intercept, monotone in the own bid (see module doc)."""

    def __init__(self, num_ads: int, l2: float = 1.0, iterations: int = 400, lr: float = 0.1):
        self.num_ads, self.l2, self.iterations, self.lr = num_ads, l2, iterations, lr
        self.w_ad = np.zeros(num_ads)
        self.bias = 0.0
        self.coef = np.zeros(4)  # rank, log1p(bid), share, log1p(max other)
        self.click_given_exposed = np.zeros(num_ads)
        self.rows = 0

    def fit(self, auctions: Auctions) -> AllocationSurrogate:
        valid = auctions.ads >= 0
        y = auctions.exposed[valid]
        if y.size == 0 or y.sum() == 0:
            raise ValueError("the logged LLM rounds expose no ad, so the surrogate has nothing to "
                             "learn; run more LLM rounds or use a policy that inserts ads (an "
                             "IRPO-trained one: --checkpoint RUN)")
        x = _features(auctions.ads, auctions.bids)[valid]
        ad = auctions.ads[valid]
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = (x - mean) / std
        w_ad, coef = np.zeros(self.num_ads), np.zeros(4)
        bias = float(np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3)))
        m = [np.zeros(self.num_ads), np.zeros(4), 0.0]
        v = [np.zeros(self.num_ads), np.zeros(4), 0.0]
        counts = np.bincount(ad, minlength=self.num_ads)
        for step in range(1, self.iterations + 1):  # Adam on the mean log loss + L2 on w_ad
            p = 1 / (1 + np.exp(-(bias + w_ad[ad] + z @ coef)))
            g = (p - y) / y.size
            grads = [np.bincount(ad, g, minlength=self.num_ads) + self.l2 * w_ad / max(y.size, 1),
                     z.T @ g, float(g.sum())]
            params = [w_ad, coef, bias]
            for i in range(3):
                m[i] = 0.9 * m[i] + 0.1 * grads[i]
                v[i] = 0.999 * v[i] + 0.001 * grads[i] ** 2
                delta = self.lr * (m[i] / (1 - 0.9 ** step)) / (
                    np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
                params[i] = params[i] - delta
            w_ad, coef, bias = params
            coef[1:3] = np.maximum(coef[1:3], 0.0)  # monotone in the own bid
            w_ad = np.where(counts > 0, w_ad, 0.0)
        # back to raw features
        self.coef = coef / std
        self.bias = float(bias - (coef * mean / std).sum())
        self.w_ad = w_ad
        shown = auctions.exposed[valid] > 0
        probs = np.nan_to_num(auctions.click_prob[valid][shown], nan=0.0)
        overall = probs.mean() if probs.size else 0.0
        sums = np.bincount(ad[shown], probs, minlength=self.num_ads)
        n = np.bincount(ad[shown], minlength=self.num_ads)
        self.click_given_exposed = (sums + 2.0 * overall) / (n + 2.0)  # 2 pseudo-exposures
        self.rows = int(y.size)
        return self

    def exposure(self, ads: np.ndarray, bids: np.ndarray) -> np.ndarray:
        logit = self.bias + self.w_ad[np.maximum(ads, 0)] + _features(ads, bids) @ self.coef
        return np.where(ads >= 0, 1 / (1 + np.exp(-logit)), 0.0)

    def itctr(self, ads: np.ndarray, bids: np.ndarray) -> np.ndarray:
        """ITCTR of every candidate of every auction at these bids."""
        return self.exposure(ads, bids) * self.click_given_exposed[np.maximum(ads, 0)] * (ads >= 0)


def surrogate_error(surrogate: AllocationSurrogate, fresh: Auctions, bins: int = 5) -> dict:
    """The surrogate against fresh LLM rounds at their own bids: mean predicted vs observed
    exposure and ITCTR (judge probability on exposures), Brier score of exposures against the
    base-rate Brier, and a calibration table by predicted-exposure quantile."""
    valid = fresh.ads >= 0
    pred = surrogate.exposure(fresh.ads, fresh.bids)[valid]
    seen = fresh.exposed[valid]
    itctr_pred = surrogate.itctr(fresh.ads, fresh.bids)[valid]
    itctr_seen = np.where(seen > 0, np.nan_to_num(fresh.click_prob[valid], nan=0.0), 0.0)
    edges = np.quantile(pred, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, bins - 1)
    table = [{"bin": b, "rows": int((which == b).sum()),
              "predicted_exposure": float(pred[which == b].mean()),
              "observed_exposure": float(seen[which == b].mean())}
             for b in range(bins) if (which == b).any()]
    return {"rows": int(valid.sum()),
            "predicted_exposure_rate": float(pred.mean()),
            "observed_exposure_rate": float(seen.mean()),
            "predicted_itctr": float(itctr_pred.mean()), "observed_itctr": float(itctr_seen.mean()),
            "brier": float(np.mean((pred - seen) ** 2)),
            "brier_base_rate": float(np.mean((seen.mean() - seen) ** 2)),
            "itctr_mae": float(np.mean(np.abs(itctr_pred - itctr_seen))),
            "calibration_mae": float(np.mean([abs(r["predicted_exposure"]
                                                  - r["observed_exposure"]) for r in table])),
            "calibration": table}
