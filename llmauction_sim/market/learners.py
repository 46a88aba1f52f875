"""Learning advertisers in the LLM market: the classic-auction learners of `classic.bidding`
(value maximizers pacing an ROI target, utility maximizers learning a shading factor) behind the
market's per-advertiser `BidPolicy`.

A learner bids ``multiplier x value per click`` (clipped to the market's bid range) in every
auction of a round and updates once per round from the round's value and spend. An LLM round
cannot say what another bid would have won, so there utility maximizers learn from bandit feedback
(EXP3 on the played factor); in surrogate rounds the allocation surrogate says it (expected value
and spend at every factor of the grid, the others' bids fixed), so there they learn from full
information (Hedge).

`market.bidding` takes one policy name for every advertiser (``value_maximizer``, ``vm``, ...) or a
population like ``"vm:50,um:50"`` (AuctionGym style; copies are assigned in catalog order and must
add up to the number of ads).
"""

from __future__ import annotations

import numpy as np

from llmauction_sim.classic.bidding import (
    BiddingPolicy,
    RoundFeedback,
    default_grid,
    make_policy,
    parse_population,
)
from llmauction_sim.config import ConfigError
from llmauction_sim.market.agents import BID_POLICIES, AuctionOutcome, BidPolicy


class LearningBidder(BidPolicy):
    """A classic learner (`classic.bidding`) bidding for one advertiser in the LLM market."""

    def __init__(self, policy: BiddingPolicy, low: float, high: float):
        self.policy = policy
        self.name = policy.type_name
        self.low, self.high = float(low), float(high)
        self._reset_round()

    def _reset_round(self) -> None:
        self.in_round = False
        self.value = self.spend = self.clicks = self.max_value = 0.0
        self.cf_value = self.cf_spend = None

    @property
    def grid(self) -> np.ndarray:
        """The learner's shading factors (bid = factor x value per click)."""
        return self.policy.grid

    def observe_counterfactual(self, cf_value: np.ndarray, cf_spend: np.ndarray) -> None:
        """Add one auction's value and spend at every factor of the grid (others' bids fixed)."""
        if self.cf_value is None:
            self.cf_value, self.cf_spend = np.zeros(len(cf_value)), np.zeros(len(cf_spend))
        self.cf_value += cf_value
        self.cf_spend += cf_spend

    def bid(self, advertiser, request_context, rng) -> float:
        if not self.in_round:
            self.policy.start_round()
            self.in_round = True
        return float(np.clip(self.policy.multiplier[0] * advertiser.value_per_click,
                             self.low, self.high))

    def observe(self, advertiser, outcome: AuctionOutcome) -> None:
        self.value += outcome.value
        self.spend += outcome.payment
        self.clicks += outcome.clicks
        self.max_value += advertiser.value_per_click  # a click in every auction: the scale

    def end_round(self, advertiser) -> None:
        if self.in_round:
            cf = (None, None) if self.cf_value is None else (self.cf_value[None],
                                                             self.cf_spend[None])
            self.policy.update(RoundFeedback(np.array([self.value]), np.array([self.spend]),
                                             np.array([float(self.clicks)]),
                                             np.array([self.max_value]), *cf))
        self._reset_round()

    def state(self) -> dict:
        learned = {}
        for key, value in vars(self.policy).items():
            if key in ("rng", "grid"):
                continue
            learned[key] = {"array": value.tolist()} if isinstance(value, np.ndarray) else value
        return {"learned": learned, "rng": self.policy.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        for key, value in state["learned"].items():
            setattr(self.policy, key, np.asarray(value["array"]) if isinstance(value, dict)
                    and set(value) == {"array"} else value)
        self.policy.rng.bit_generator.state = state["rng"]
        self._reset_round()


def _learner(kind: str, params: dict | None = None):
    def factory(market, value, rng):
        grid = default_grid()
        return LearningBidder(make_policy(kind, 1, rng=rng, grid=grid, **(params or {})),
                              market.bid_low, market.bid_high)
    return factory


for _name, _description in (
        ("value_maximizer", "learner (vm): most value with ROI >= tau, pacing a bid multiplier"),
        ("utility_maximizer", "learner (um): most value - spend, learning a shading factor"),
        ("truthful", "bids its value per click (clipped to the bid range)")):
    BID_POLICIES.register(_name, _learner(_name), _description)


def population_factories(spec: str, num_ads: int) -> list:
    """One bid-policy factory per advertiser for a population spec like ``"vm:50,um:50"``."""
    entries = parse_population(spec)
    total = sum(e.num_copies for e in entries)
    if total != num_ads:
        raise ConfigError(f"market.bidding = {spec!r} has {total} advertisers but the catalog "
                          f"has {num_ads} ads; make the copies add up to {num_ads}")
    return [_learner(e.type, e.params) for e in entries for _ in range(e.num_copies)]
