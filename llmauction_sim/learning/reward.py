"""The training reward R(y) of IRPO (paper Eq. 5/8), batched over many responses.

    R(x, h, a, b, y) = sum over validly inserted ads i of b_i * pctr_i(x, h, a_i, y)
                       - lambda * s_resp(y),          lambda = 1

R itself is `domain.mentions` (`exposure_revenue`, `net_reward`; valid insertions and s_resp from
`validate_response` and `format_penalty`); pCTRs come from one batched `predict` call of the pCTR
reward model over every (response, exposed ad).
The `oracle` variant puts the realised clicks (0/1) in place of the pCTRs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmauction_sim.config import PenaltyConfig
from llmauction_sim.domain.mentions import (
    MentionReport,
    exposure_revenue,
    format_penalty,
    net_reward,
    validate_response,
)

REWARD_KINDS = ("pctr", "oracle")


@dataclass(frozen=True)
class RewardBreakdown:
    """R(y) of one response and its parts; `ctr` holds the pCTR (or the click) of each exposed ad."""
    reward: float
    expected_revenue: float
    penalty: float
    exposed_ids: tuple[str, ...]
    ctr: Mapping[str, float] = field(default_factory=dict)
    report: MentionReport | None = None


def rewards_array(breakdowns: Sequence[RewardBreakdown]) -> np.ndarray:
    return np.array([b.reward for b in breakdowns], dtype=np.float64)


def _reports(requests: Sequence, responses: Sequence[str],
             catalog_ids: Collection[str] | None) -> list[MentionReport]:
    if len(requests) != len(responses):
        raise ValueError(f"got {len(responses)} responses for {len(requests)} requests; pass one "
                         "request per response (repeat a request for each of its samples)")
    return [validate_response(text, {ad.id: ad.title for ad in req.candidates}, catalog_ids)
            for req, text in zip(requests, responses)]


def _combine(requests, reports, ctrs, penalty: PenaltyConfig, lam: float
             ) -> list[RewardBreakdown]:
    out = []
    for req, report, ctr in zip(requests, reports, ctrs):
        revenue = exposure_revenue(report.exposed_ids, req.bids, ctr)
        s_resp = format_penalty(report, penalty)
        out.append(RewardBreakdown(net_reward(revenue, s_resp, lam), revenue, s_resp,
                                   report.exposed_ids, dict(ctr), report))
    return out


def pctr_rewards(requests: Sequence, responses: Sequence[str], pctr_model,
                 penalty: PenaltyConfig | None = None, lam: float = 1.0,
                 catalog_ids: Collection[str] | None = None) -> list[RewardBreakdown]:
    """R(y) with the pCTR model, for `responses[k]` answering `requests[k]`.

    A request needs ``profile.user_id``, ``query``, ``candidates`` (ads with ``id``, ``title``) and
    ``bids`` (ad_id -> bid), as `mechanisms.base.AuctionRequest` has. `pctr_model` needs
    ``predict(rows) -> ndarray`` over rows with user_id, ad_id, query, response; it is called once.
    """
    penalty = penalty or PenaltyConfig()
    reports = _reports(requests, responses, catalog_ids)
    rows = [{"user_id": req.profile.user_id, "ad_id": ad_id, "query": req.query,
             "response": text}
            for req, text, rep in zip(requests, responses, reports) for ad_id in rep.exposed_ids]
    flat = np.asarray(pctr_model.predict(rows), dtype=np.float64) if rows else np.zeros(0)
    ctrs, k = [], 0
    for rep in reports:
        ctrs.append({ad_id: float(flat[k + j]) for j, ad_id in enumerate(rep.exposed_ids)})
        k += rep.num_ads
    return _combine(requests, reports, ctrs, penalty, lam)


def oracle_rewards(requests: Sequence, responses: Sequence[str],
                   clicks: Sequence[Mapping[str, bool | int | float]],
                   penalty: PenaltyConfig | None = None, lam: float = 1.0,
                   catalog_ids: Collection[str] | None = None) -> list[RewardBreakdown]:
    """R(y) with realised clicks (the paper's oracle): `clicks[k]` maps each validly exposed ad of
    `responses[k]` to 0/1; an exposed ad missing from it raises KeyError."""
    penalty = penalty or PenaltyConfig()
    reports = _reports(requests, responses, catalog_ids)
    if len(clicks) != len(responses):
        raise ValueError(f"got {len(clicks)} click records for {len(responses)} responses")
    ctrs = []
    for k, (rep, record) in enumerate(zip(reports, clicks)):
        missing = [i for i in rep.exposed_ids if i not in record]
        if missing:
            raise KeyError(f"response {k}: exposed ad(s) {missing} have no click record")
        ctrs.append({i: float(record[i]) for i in rep.exposed_ids})
    return _combine(requests, reports, ctrs, penalty, lam)
