"""The one round pipeline (rounds.py) and the one reward R(y), on scripted doubles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmauction_sim.clicks.base import ClickDecision
from llmauction_sim.config import PenaltyConfig
from llmauction_sim.domain.mentions import (
    exposure_revenue,
    format_penalty,
    paper_reward,
    render_mention,
    validate_response,
)
from llmauction_sim.domain.users import profiles_to_frame
from llmauction_sim.learning.reward import oracle_rewards
from llmauction_sim.mechanisms.base import AuctionRequest, FirstPricePerClick
from llmauction_sim.rounds import (
    EVALUATE_COLUMNS,
    MARKET_COLUMNS,
    as_allocations,
    auctions_for,
    logged_requests,
    play_round,
    query_row,
    summarize,
    with_uniform_bids,
)


class Mentioning(FirstPricePerClick):
    """Mentions the first two candidates, then an unknown ad; counts its batched calls."""

    name = "mentioning"

    def __init__(self, catalog, penalty):
        self.catalog_ids, self.penalty, self.calls = catalog.ids, penalty, 0

    def allocate(self, requests, rng):
        self.calls += 1
        texts = [f"{render_mention(r.candidates[0].title, r.candidates[0].id)} and "
                 f"{render_mention(r.candidates[1].title, r.candidates[1].id)} "
                 f"(n{int(rng.integers(100))}) @Nope@[Ad-9999]" for r in requests]
        return as_allocations(requests, texts, self.penalty, self.catalog_ids)


class ClicksFirst:
    """Clicks the first exposed ad and an ad it never showed; P = 0.5 per shown ad."""

    name = "clicks-first"

    def __init__(self):
        self.calls, self.seen = 0, []

    def judge(self, requests, rng):
        self.calls += 1
        self.seen.extend(requests)
        return [ClickDecision(tuple([r.exposed[0].id] if r.exposed else []) + ("Ad-0100",),
                              {ad.id: 0.5 for ad in r.exposed}) for r in requests]


class Retriever:
    """The first three catalog ads for every query."""

    def __init__(self, catalog):
        self.catalog, self.calls = catalog, 0

    def retrieve(self, profiles, queries):
        self.calls += 1
        return [list(self.catalog[:3]) for _ in queries]


@pytest.fixture
def auctions(packaged_catalog, profile_factory):
    profiles = [profile_factory("yoga", user_id="U-00001"),
                profile_factory("tea", user_id="U-00002")]
    frame = profiles_to_frame(profiles)
    queries = pd.DataFrame({"query_id": ["Q-1", "Q-2", "Q-3"],
                            "user_id": ["U-00001", "U-00002", "U-00001"],
                            "query": ["mat?", "green tea?", "blocks?"]})
    retriever = Retriever(packaged_catalog)
    out = auctions_for(frame, queries, retriever)
    assert retriever.calls == 1  # one retrieval for the batch
    return out


def test_requests_get_the_papers_bids_in_order(auctions):
    assert [r.query_id for r in auctions] == ["Q-1", "Q-2", "Q-3"]
    assert [r.profile.user_id for r in auctions] == ["U-00001", "U-00002", "U-00001"]
    assert all(set(r.bids.values()) == {0.0} for r in auctions)
    bid = with_uniform_bids(auctions, 1, 100, np.random.default_rng(5))
    rng = np.random.default_rng(5)  # one vector of len(candidates) per auction, in order
    for r, b in zip(auctions, bid):
        want = rng.integers(1, 101, len(r.candidates))
        assert [b.bids[ad.id] for ad in r.candidates] == [float(x) for x in want]
        assert (b.query_id, b.profile, b.query, b.candidates) == \
            (r.query_id, r.profile, r.query, r.candidates)


def test_one_round_one_allocate_one_judge_and_the_logs(auctions, packaged_catalog):
    penalty = PenaltyConfig()
    requests = with_uniform_bids(auctions, 1, 100, np.random.default_rng(0))
    mechanism, judge = Mentioning(packaged_catalog, penalty), ClicksFirst()
    played = play_round(mechanism, judge, packaged_catalog, requests, np.random.default_rng(1))
    assert mechanism.calls == judge.calls == 1
    assert set(played.seconds) == {"allocate", "judge"}
    for r, o, seen in zip(requests, played.outcomes, judge.seen):
        first, second = r.candidates[0].id, r.candidates[1].id
        assert [ad.id for ad in seen.exposed] == [first, second]  # the valid mentions only
        assert [m.ad_id for m in seen.mentions] == [first, second]
        assert o.clicked == (first,)  # the click on an ad never shown is dropped
        assert o.payments == {first: r.bids[first]}  # first price per click
        assert o.revenue == r.bids[first]
        assert o.reward == o.revenue - o.allocation.penalty
        assert o.allocation.penalty == format_penalty(o.allocation.report, penalty)

    market = pd.DataFrame([query_row(o, MARKET_COLUMNS, step=3) for o in played.outcomes])
    assert tuple(market.columns) == MARKET_COLUMNS and set(market["step"]) == {3}
    assert market["format_error_kinds"].iloc[0] == {"unknown_id": 1}
    prices = [{"x": 1.0}] * len(requests)
    evaluated = pd.DataFrame([query_row(o, EVALUATE_COLUMNS, click_prices=p)
                              for o, p in zip(played.outcomes, prices)])
    assert tuple(evaluated.columns) == EVALUATE_COLUMNS
    assert list(evaluated["payments"]) == [dict(o.payments) for o in played.outcomes]
    summary = summarize(evaluated)
    assert summary["queries"] == 3 and summary["exposures"] == 6 and summary["clicks"] == 3
    assert summary["ctr"] == 0.5 and summary["format_error_rate"] == 1.0
    assert summary["revenue"] == sum(r.bids[r.candidates[0].id] for r in requests)

    # The logged auctions come back as the same requests, one id per row.
    again = logged_requests(market, {r.profile.user_id: r.profile for r in requests}.__getitem__,
                            packaged_catalog)
    assert [r.query_id for r in again] == ["Q-1#0", "Q-2#1", "Q-3#2"]
    assert [(r.candidates, dict(r.bids)) for r in again] == \
        [(r.candidates, dict(r.bids)) for r in requests]


def test_separate_judge_generator_and_own_charge(auctions, packaged_catalog):
    requests = with_uniform_bids(auctions, 1, 100, np.random.default_rng(0))
    charged = []

    def pay(request, allocation, clicked):
        charged.append(clicked)
        return {c: 1.0 for c in clicked}

    a = play_round(Mentioning(packaged_catalog, PenaltyConfig()), ClicksFirst(),
                   packaged_catalog, requests, np.random.default_rng(1),
                   np.random.default_rng(2), pay=pay)
    assert charged == [o.clicked for o in a.outcomes]
    assert all(o.revenue == 1.0 for o in a.outcomes)


def test_one_reward_everywhere(packaged_catalog, profile_factory):
    ads = packaged_catalog[:3]
    request = AuctionRequest("Q", profile_factory("x"), "q?", tuple(ads),
                             {ads[0].id: 30.0, ads[1].id: 7.0, ads[2].id: 55.0})
    text = (f"{render_mention(ads[2].title, ads[2].id)} {render_mention(ads[0].title, ads[0].id)}"
            f" {render_mention(ads[2].title, ads[2].id)}")
    report = validate_response(text, request.candidate_titles(), packaged_catalog.ids)
    clicks = {ads[2].id: 1, ads[0].id: 0}
    penalty = PenaltyConfig()
    r = paper_reward(report, request.bids, clicks, penalty)
    assert r == 55.0 - format_penalty(report, penalty)
    batch = oracle_rewards([request], [text], [clicks], penalty, 1.0, packaged_catalog.ids)[0]
    assert batch.reward == r and batch.expected_revenue == 55.0
    # No exposed ad: revenue 0 (an int, as the sample logs store it), R = -lambda s_resp.
    assert exposure_revenue((), request.bids, {}) == 0
    assert type(exposure_revenue((), request.bids, {})) is int
    with pytest.raises(KeyError, match="bid and a ctr"):
        exposure_revenue((ads[1].id,), request.bids, {})
