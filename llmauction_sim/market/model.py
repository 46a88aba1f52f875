"""`AdMarket`: the Mesa model whose step is one round of LLM-native ad auctions.

One round: some users each ask one query; candidate ads are retrieved; every candidate's
advertiser bids; the auctioneer's mechanism answers ALL the round's queries in one batched call;
the User-LLM judges ALL the answers' clicks in one batched call; clicked ads pay (first price per
click for the paper's mechanisms). Every random draw of round t comes from a Generator seeded by
(seed, t), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import time

import mesa
import numpy as np
import pandas as pd

from llmauction_sim.clicks.base import make_judge
from llmauction_sim.config import RunConfig
from llmauction_sim.domain.catalog import Catalog, load_catalog
from llmauction_sim.domain.users import profiles_from_frame
from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder
from llmauction_sim.market.agents import (
    AdvertiserAgent,
    AuctioneerAgent,
    AuctionOutcome,
    UserAgent,
    make_bid_policy,
)
from llmauction_sim.market.learners import population_factories
from llmauction_sim.market.surrogate import AllocationSurrogate, auctions_from_log
from llmauction_sim.mechanisms import AuctionRequest, make_mechanism
from llmauction_sim.rounds import MARKET_COLUMNS, play_round, query_row

# independent seed streams: advertiser setup, rounds, surrogate rounds
_VALUES_STREAM, _ROUND_STREAM, _SURROGATE_STREAM = 1, 2, 3


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


MODEL_REPORTERS = {
    "queries": lambda m: len(m.round_records),
    "revenue_per_query": lambda m: _mean(r["revenue"] for r in m.round_records),
    "reward_per_query": lambda m: _mean(r["reward"] for r in m.round_records),
    "ctr": lambda m: (sum(len(r["clicked"]) for r in m.round_records)
                      / max(1, sum(len(r["exposed"]) for r in m.round_records))
                      if any(r["exposed"] for r in m.round_records) else math.nan),
    "ads_per_response": lambda m: _mean(len(r["exposed"]) for r in m.round_records),
    "format_error_rate": lambda m: _mean(r["format_errors"] > 0 for r in m.round_records),
    "no_ad_rate": lambda m: _mean(not r["exposed"] for r in m.round_records),
    "judge_malformed_rate": lambda m: _mean(r["judge_malformed"] for r in m.round_records),
    "surrogate_rounds": lambda m: m.surrogate_rounds_run,
}

ADVERTISER_REPORTERS = {
    "ad_id": "ad_id",
    "value_per_click": "value_per_click",
    "bid": "bid",
    "auctions": "auctions",
    "exposures": "exposures",
    "clicks": "clicks",
    "spend": "spend",
    "value": "value",
    "roi": "roi",
    "utility": "utility",
}


class AdMarket(mesa.Model):
    """A market of users, one advertiser per catalog ad, and an auctioneer.

    `profiles` / `queries` are the frames of a data build (profiles.parquet / queries.parquet);
    every user in `profiles` becomes a UserAgent with its queries. Resources (models, encoder,
    catalog, mechanism, judge) are built from `config` unless passed in.
    """

    def __init__(self, config: RunConfig, profiles: pd.DataFrame, queries: pd.DataFrame, *,
                 catalog: Catalog | None = None, encoder=None, retriever=None, mechanism=None,
                 judge=None, ad_lm=None, user_lm=None):
        super().__init__(seed=config.seed)
        self.config = config
        market = config.market
        self.catalog = catalog if catalog is not None else load_catalog(config.data.catalog)
        if retriever is None:
            encoder = encoder if encoder is not None else load_encoder(config.retrieval.encoder)
            retriever = CandidateRetriever(self.catalog, encoder, config.retrieval.num_candidates,
                                           config.retrieval.profile_weight)
        self.retriever = retriever
        encoder = encoder if encoder is not None else retriever.encoder
        mechanism = mechanism if mechanism is not None else make_mechanism(
            market.mechanism, config, ad_lm=ad_lm, catalog=self.catalog,
            # The logprob pCTR model reuses the User-LLM rather than loading it again.
            **({"user_lm": user_lm} if user_lm is not None else {}))
        self.judge = judge if judge is not None else make_judge(
            config.clicks.judge, config, user_lm=user_lm, encoder=encoder, catalog=self.catalog)

        by_user: dict[str, list[tuple[str, str]]] = {}
        for qid, uid, text in zip(queries["query_id"], queries["user_id"], queries["query"]):
            by_user.setdefault(uid, []).append((qid, text))
        self.users = [UserAgent(self, p, by_user[p.user_id])
                      for p in profiles_from_frame(profiles) if p.user_id in by_user]
        if not self.users:
            raise ValueError("no user has a query: pass the profiles and queries of one data "
                             "build (`llmauction data build`)")
        setup = np.random.default_rng([config.seed, _VALUES_STREAM])
        values = setup.uniform(market.value_low, market.value_high, len(self.catalog))
        if ":" in market.bidding:  # a population such as "vm:50,um:50"
            factories = population_factories(market.bidding, len(self.catalog))
            policies = [f(market, v, setup) for f, v in zip(factories, values)]
        else:
            policies = [make_bid_policy(market.bidding, market, v, setup, config.bid_policies)
                        for v in values]
        self.advertisers = {ad.id: AdvertiserAgent(self, ad, v, policy)
                            for ad, v, policy in zip(self.catalog, values, policies)}
        self.auctioneer = AuctioneerAgent(self, mechanism)
        self.round_records: list[dict] = []
        self.history: list[pd.DataFrame] = []  # every LLM round's records (the surrogate's data)
        self.surrogate_rounds_run = 0
        self.surrogate = None  # the allocation surrogate of the latest surrogate rounds
        self.timings: dict[str, float] = {}
        self.datacollector = mesa.DataCollector(
            model_reporters=MODEL_REPORTERS,
            agenttype_reporters={AdvertiserAgent: ADVERTISER_REPORTERS})

    def round_rng(self, round_index: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, _ROUND_STREAM, round_index])

    def step(self) -> None:
        rng = self.round_rng(self.steps)
        q = self.config.market.queries_per_step
        picked = rng.choice(len(self.users), size=q, replace=q > len(self.users))
        asked = [(self.users[int(i)], *self.users[int(i)].next_query(rng)) for i in picked]
        profiles = [u.profile for u, _, _ in asked]
        texts = [text for _, _, text in asked]

        t0 = time.perf_counter()
        candidates = self.retriever.retrieve(profiles, texts)
        requests = []
        for (user, qid, text), cands in zip(asked, candidates):
            bids = {ad.id: self.advertisers[ad.id].place_bid(text, rng) for ad in cands}
            requests.append(AuctionRequest(qid, user.profile, text, tuple(cands), bids))
        t1 = time.perf_counter()
        played = play_round(self.auctioneer, self.judge, self.catalog, requests, rng,
                            pay=self.auctioneer.charge)

        self.round_records = []
        for (user, _, _), outcome in zip(asked, played.outcomes):
            exposed, clicked = outcome.allocation.exposed_ids, outcome.clicked
            for ad in outcome.request.candidates:
                self.advertisers[ad.id].settle(outcome.request.bids[ad.id], ad.id in exposed,
                                               int(ad.id in clicked),
                                               outcome.payments.get(ad.id, 0.0))
            user.clicks += len(clicked)
            self.round_records.append(query_row(outcome, MARKET_COLUMNS, step=self.steps))
        for advertiser in self.advertisers.values():  # learners update once per round
            advertiser.policy.end_round(advertiser)
        self.history.append(pd.DataFrame(self.round_records))
        t4 = time.perf_counter()
        self.surrogate_rounds_run = self.run_surrogate_rounds()
        for key, seconds in (("retrieve_and_bid", t1 - t0),
                             ("allocate", played.seconds["allocate"]),
                             ("judge", played.seconds["judge"]),
                             ("surrogate", time.perf_counter() - t4)):
            self.timings[key] = self.timings.get(key, 0.0) + seconds
        self.datacollector.collect(self)

    def run_surrogate_rounds(self) -> int:
        """`market.surrogate_rounds` bidding rounds on the allocation surrogate fitted to every LLM
        round so far (to the current Ad-LLM's rounds when `market.rounds_per_epoch` retrains it;
        market/surrogate.py); returns how many ran (0 before any ad was exposed).
        Their outcomes reach the bid policies only; the advertisers' totals count LLM rounds."""
        market = self.config.market
        if not market.surrogate_rounds:
            return 0
        history = self.history
        if market.rounds_per_epoch:  # the Ad-LLM changes every K rounds: fit the current one
            history = history[(self.steps - 1) // market.rounds_per_epoch
                              * market.rounds_per_epoch:]
        logged = auctions_from_log(pd.concat(history, ignore_index=True), self.catalog.ids)
        try:
            surrogate = AllocationSurrogate(len(self.catalog)).fit(logged)
        except ValueError:
            return 0  # no exposure logged yet
        self.surrogate = surrogate
        rng = np.random.default_rng([self.config.seed, _SURROGATE_STREAM, self.steps])
        agents = [self.advertisers[ad_id] for ad_id in self.catalog.ids]
        n = market.surrogate_auctions or market.queries_per_step
        for _ in range(market.surrogate_rounds):
            ads = logged.ads[rng.integers(0, len(logged.ads), n)]
            rows, cols = np.nonzero(ads >= 0)
            bids = np.zeros(ads.shape)
            for i, j in zip(rows, cols):
                agent = agents[ads[i, j]]
                bids[i, j] = agent.policy.bid(agent, None, rng)
            exposed = rng.random(ads.shape) < surrogate.exposure(ads, bids)
            clicked = exposed & (rng.random(ads.shape)
                                 < surrogate.click_given_exposed[np.maximum(ads, 0)])
            for i, j in zip(rows, cols):
                agent, bid, c = agents[ads[i, j]], float(bids[i, j]), int(clicked[i, j])
                agent.policy.observe(agent, AuctionOutcome(bid, bool(exposed[i, j]), c, bid * c,
                                                           agent.value_per_click * c))
                if agent.policy.grid is not None:
                    cf_bids = np.clip(agent.policy.grid * agent.value_per_click,
                                      market.bid_low, market.bid_high)
                    trial = np.repeat(bids[i:i + 1], len(cf_bids), axis=0)
                    trial[:, j] = cf_bids
                    clicks = surrogate.itctr(np.repeat(ads[i:i + 1], len(cf_bids), axis=0),
                                             trial)[:, j]  # expected, first price per click
                    agent.policy.observe_counterfactual(agent.value_per_click * clicks,
                                                        cf_bids * clicks)
            for agent in agents:
                agent.policy.end_round(agent)
        return market.surrogate_rounds

    # --- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a resumed run needs besides the logs (JSON-serialisable)."""
        return {"steps": self.steps,
                "users": {u.profile.user_id: u.state() for u in self.users},
                "advertisers": {i: a.state() for i, a in self.advertisers.items()},
                "auctioneer": self.auctioneer.state(),
                "timings": self.timings}

    def load_state(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for user in self.users:
            user.load_state(state["users"][user.profile.user_id])
        for ad_id, advertiser in self.advertisers.items():
            advertiser.load_state(state["advertisers"][ad_id])
        self.auctioneer.load_state(state["auctioneer"])
        self.timings = dict(state["timings"])
