"""One round of auctions, one code path: build requests, allocate, judge clicks, charge, log rows.

The market (`AdMarket.step`), `evaluate` and IRPO's collect and sample phases run their auctions
through these steps, so an auction, a click, a payment and a logged metric mean the same thing
in all of them:

1. requests - `auctions_for` (a data build's queries with their retrieved candidates),
   `with_uniform_bids` (the paper's bids), `logged_requests` (the auctions of a per-query log);
2. allocate - ONE batched `mechanism.allocate` call (`play_round`);
3. judge    - ONE batched `judge.judge` call over the validly exposed ads (`judge_clicks`);
4. charge   - clicks on shown ads pay (`charge`);
5. log      - one row per auction (`query_row`) and the whole-run metrics (`summarize`).

What only one caller does stays with it: the market's advertisers settling and its
DataCollector, `evaluate`'s click prices, IRPO's click log of exposed ads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from llmauction_sim.clicks.base import ClickDecision, ClickJudge, ClickRequest
from llmauction_sim.domain.catalog import Catalog
from llmauction_sim.domain.mentions import format_penalty, net_reward, validate_response
from llmauction_sim.domain.users import UserProfile, profiles_from_frame
from llmauction_sim.mechanisms.base import Allocation, AuctionRequest

Pay = Callable[[AuctionRequest, Allocation, Sequence[str]], Mapping[str, float]]

# ------------------------------------------------------------------------------------------------
# 1. requests


def auctions_for(profiles: pd.DataFrame, queries: pd.DataFrame, retriever
                 ) -> list[AuctionRequest]:
    """One auction per row of `queries` (rows of a data build's queries.parquet): the asking
    user's profile (from `profiles`), the question and its retrieved candidates, all bids 0 until
    `with_uniform_bids` (or a market's advertisers) set them. One retrieval call."""
    by_user = {p.user_id: p for p in profiles_from_frame(profiles)}
    users = [by_user[u] for u in queries["user_id"]]
    texts = list(queries["query"])
    return [AuctionRequest(qid, user, text, tuple(cands), {ad.id: 0.0 for ad in cands})
            for qid, user, text, cands in zip(queries["query_id"], users, texts,
                                              retriever.retrieve(users, texts))]


def with_uniform_bids(auctions: Sequence[AuctionRequest], low: int, high: int,
                      rng: np.random.Generator) -> list[AuctionRequest]:
    """`auctions` with the paper's bids: integers uniform over low..high, drawn from `rng` as one
    vector of len(candidates) per auction, auction after auction."""
    out = []
    for r in auctions:
        bids = rng.integers(low, high + 1, len(r.candidates))
        out.append(AuctionRequest(r.query_id, r.profile, r.query, r.candidates,
                                  {ad.id: float(b) for ad, b in zip(r.candidates, bids)}))
    return out


def logged_requests(log: pd.DataFrame, profile_of: Callable[[str], UserProfile],
                    catalog: Catalog) -> list[AuctionRequest]:
    """The auctions of a per-query log: same users, queries, candidates and bids. A query can be
    asked more than once, so the row number keeps each auction's id unique (``query_id#row``)."""
    return [AuctionRequest(f"{qid}#{i}", profile_of(uid), text,
                           tuple(catalog.by_id(a) for a in cands),
                           {k: float(v) for k, v in bids.items()})
            for i, (qid, uid, text, cands, bids) in enumerate(zip(
                log["query_id"], log["user_id"], log["query"], log["candidates"], log["bids"]))]


def as_allocations(requests: Sequence[AuctionRequest], responses: Sequence[str], penalty,
                   catalog_ids) -> list[Allocation]:
    """Answers written outside a mechanism (a policy's samples) read as allocations: their
    valid mentions and format penalty."""
    out = []
    for r, text in zip(requests, responses):
        report = validate_response(text, r.candidate_titles(), catalog_ids)
        out.append(Allocation(text, report, format_penalty(report, penalty)))
    return out


# ------------------------------------------------------------------------------------------------
# 3. judge, 4. charge


def click_requests(requests: Sequence[AuctionRequest], allocations: Sequence[Allocation],
                   catalog: Catalog) -> list[ClickRequest]:
    """What each user saw: the answer and its validly exposed ads, in order."""
    return [ClickRequest(r.profile, r.query, a.response,
                         tuple(catalog.by_id(i) for i in a.exposed_ids), a.report.valid)
            for r, a in zip(requests, allocations)]


def judge_clicks(judge: ClickJudge, catalog: Catalog, requests: Sequence[AuctionRequest],
                 allocations: Sequence[Allocation], rng: np.random.Generator
                 ) -> list[ClickDecision]:
    """The click decision on every answer, in ONE batched judge call."""
    return judge.judge(click_requests(requests, allocations, catalog), rng)


@dataclass(frozen=True)
class Outcome:
    """One auction after its round: what was shown, clicked and paid."""

    request: AuctionRequest
    allocation: Allocation
    decision: ClickDecision
    clicked: tuple[str, ...]  # the judge's clicks on ads the answer validly showed
    payments: Mapping[str, float]

    @property
    def revenue(self) -> float:
        return float(sum(self.payments.values()))

    @property
    def reward(self) -> float:
        """The paper's R with the realised clicks standing in for pCTR: the charged payments
        (bid x click under first price per click) minus the format penalty."""
        return net_reward(self.revenue, self.allocation.penalty)


def charge(requests: Sequence[AuctionRequest], allocations: Sequence[Allocation],
           decisions: Sequence[ClickDecision], pay: Pay) -> list[Outcome]:
    """Each auction's outcome: clicks outside the shown ads are dropped, the rest paid by `pay`
    (a mechanism's `payments`, or the auctioneer's `charge`, which also books the revenue)."""
    out = []
    for r, a, d in zip(requests, allocations, decisions):
        clicked = tuple(c for c in d.clicked if c in a.exposed_ids)
        out.append(Outcome(r, a, d, clicked, pay(r, a, clicked)))
    return out


@dataclass
class Round:
    outcomes: list[Outcome]
    seconds: dict[str, float] = field(default_factory=dict)  # "allocate", "judge"


def play_round(mechanism, judge: ClickJudge, catalog: Catalog,
               requests: Sequence[AuctionRequest], rng: np.random.Generator,
               judge_rng: np.random.Generator | None = None, pay: Pay | None = None) -> Round:
    """Allocate every auction in ONE batched `mechanism.allocate` call (draws from `rng`), judge
    the clicks in ONE batched call (draws from `judge_rng`, default `rng` after the allocation),
    charge with `pay` (default `mechanism.payments`)."""
    start = time.perf_counter()
    allocations = mechanism.allocate(requests, rng)
    allocated = time.perf_counter()
    decisions = judge_clicks(judge, catalog, requests, allocations,
                             rng if judge_rng is None else judge_rng)
    judged = time.perf_counter()
    outcomes = charge(requests, allocations, decisions,
                      mechanism.payments if pay is None else pay)
    return Round(outcomes, {"allocate": allocated - start, "judge": judged - allocated})


# ------------------------------------------------------------------------------------------------
# 5. log

_FIELDS: dict[str, Callable[[Outcome], object]] = {
    "query_id": lambda o: o.request.query_id,
    "user_id": lambda o: o.request.profile.user_id,
    "query": lambda o: o.request.query,
    "response": lambda o: o.allocation.response,
    "candidates": lambda o: [ad.id for ad in o.request.candidates],
    "bids": lambda o: dict(o.request.bids),
    "exposed": lambda o: list(o.allocation.exposed_ids),
    "clicked": lambda o: list(o.clicked),
    "payments": lambda o: dict(o.payments),
    "click_probabilities": lambda o: dict(o.decision.probabilities),
    "revenue": lambda o: o.revenue,
    "format_penalty": lambda o: o.allocation.penalty,
    "reward": lambda o: o.reward,
    "format_errors": lambda o: o.allocation.report.num_errors,
    "format_error_kinds": lambda o: {k: v for k, v in o.allocation.report.error_counts().items()
                                     if v},
    "judge_malformed": lambda o: bool(o.decision.malformed),
}

#: The per-query log of a market round (`simulate`'s queries.parquet); `step` is the caller's.
MARKET_COLUMNS = ("step", "query_id", "user_id", "query", "response", "candidates", "bids",
                  "exposed", "clicked", "click_probabilities", "revenue", "format_penalty",
                  "reward", "format_errors", "format_error_kinds", "judge_malformed")
#: `evaluate`'s queries.parquet; `click_prices` (what a click on each shown ad would cost) is
#: the caller's.
EVALUATE_COLUMNS = ("query_id", "user_id", "query", "response", "candidates", "bids", "exposed",
                    "clicked", "payments", "click_prices", "click_probabilities", "revenue",
                    "format_penalty", "reward", "format_errors", "judge_malformed")


def query_row(outcome: Outcome, columns: Sequence[str], **extra) -> dict:
    """One auction's row of a per-query log, with `columns` in order; `extra` gives the values
    of columns only the caller knows."""
    return {c: extra[c] if c in extra else _FIELDS[c](outcome) for c in columns}


def summarize(queries: pd.DataFrame) -> dict:
    """Whole-run metrics from the per-query log (null where undefined, e.g. CTR with no ads)."""
    exposures = int(queries["exposed"].map(len).sum())
    clicks = int(queries["clicked"].map(len).sum())

    def mean(series) -> float | None:
        return float(series.mean()) if len(series) else None

    return {
        "queries": len(queries),
        "revenue": float(queries["revenue"].sum()),
        "revenue_per_query": mean(queries["revenue"]),
        "reward_per_query": mean(queries["reward"]),
        "ctr": clicks / exposures if exposures else None,
        "ads_per_response": mean(queries["exposed"].map(len)),
        "format_error_rate": mean(queries["format_errors"] > 0),
        "no_ad_rate": mean(queries["exposed"].map(len) == 0),
        "judge_malformed_rate": mean(queries["judge_malformed"]),
        "exposures": exposures,
        "clicks": clicks,
    }
