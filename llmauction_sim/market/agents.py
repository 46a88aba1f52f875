"""Mesa agents of the market: users who ask and click, advertisers who bid and pay, the auctioneer.

Advertisers bid through a `BidPolicy` (registered by name) so learning bidders plug in without
touching the market: a policy sees each auction it enters and each outcome it gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mesa
import numpy as np

from llmauction_sim.classic.bidding import CLASSIC_POLICIES, parse_population
from llmauction_sim.config import BidPolicyConfig, ConfigError
from llmauction_sim.domain.catalog import Ad
from llmauction_sim.domain.users import UserProfile
from llmauction_sim.mechanisms.base import Allocation, AuctionRequest, Mechanism
from llmauction_sim.registry import Registry

# ------------------------------------------------------------------------------------------------
# bidding policies
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AuctionOutcome:
    """What one advertiser got from one auction (the policy's feedback)."""

    bid: float
    exposed: bool
    clicks: int
    payment: float
    value: float


class BidPolicy:
    """Base class of advertisers' bid policies: subclass it, implement `bid`, register a factory.

    Every hook the market calls is declared here with its default (a policy that does not learn
    overrides only `bid`). Per auction: `bid`, then `observe` with the outcome; once per round:
    `end_round`. A policy with a `grid` of shading factors (bid = factor x value per click) also
    gets, in surrogate rounds, the value and spend it would have had at every factor
    (`observe_counterfactual`).
    """

    name: str = ""
    description: str = ""  # one line, shown by `bid_policy_descriptions()`
    config_class: type | None = None  # dataclass of the policy's own settings, if any
    # Shading factors for counterfactual feedback; None: the policy takes none.
    grid: np.ndarray | None = None

    def bid(self, advertiser: AdvertiserAgent, request_context: Any, rng: np.random.Generator
            ) -> float:
        """The bid for one auction the advertiser's ad is a candidate in."""
        raise NotImplementedError(f"{type(self).__name__} must implement bid()")

    def observe(self, advertiser: AdvertiserAgent, outcome: AuctionOutcome) -> None:
        """Feedback after each auction (learning policies update here or in `end_round`)."""

    def end_round(self, advertiser: AdvertiserAgent) -> None:
        """Called once after every round, LLM or surrogate."""

    def observe_counterfactual(self, cf_value: np.ndarray, cf_spend: np.ndarray) -> None:
        """One auction's value and spend at every factor of `grid`, the others' bids fixed."""

    def state(self) -> dict:
        """JSON-serialisable learning state, for checkpoints."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what `state` returned."""


class UniformPerQuery(BidPolicy):
    """The paper's bids: an integer drawn uniformly from [low, high] for every query."""

    name = "uniform_per_query"

    def __init__(self, low: int, high: int):
        self.low, self.high = int(low), int(high)

    def bid(self, advertiser, request_context, rng):
        return float(rng.integers(self.low, self.high + 1))


class FixedBid(BidPolicy):
    """One bid per ad, drawn once (integer in [low, high]) and kept for the whole run."""

    name = "fixed"

    def __init__(self, value: float):
        self.value = float(value)

    def bid(self, advertiser, request_context, rng):
        return self.value

    def state(self):
        return {"value": self.value}

    def load_state(self, state):
        self.value = float(state["value"])


# A factory gets the market config, the advertiser's private value and a Generator for its own
# one-off draws. Short names (vm, um) are the classic policies' alias table, shared.
BID_POLICIES: Registry[Callable[..., BidPolicy]] = Registry(
    "bid policy", "config: market.bidding", aliases=CLASSIC_POLICIES.aliases, error=ConfigError,
    group="llmauction_sim.bid_policies")
BID_POLICIES.register(
    "uniform_per_query", lambda market, value, rng: UniformPerQuery(market.bid_low, market.bid_high),
    "the paper's bids: an integer uniform in [bid_low, bid_high] for every query")
BID_POLICIES.register("fixed", lambda market, value, rng: FixedBid(
    rng.integers(market.bid_low, market.bid_high + 1)),
    "one integer bid per ad in [bid_low, bid_high], drawn once and kept")


def register_bid_policy(name: str, factory: Callable[..., BidPolicy],
                        description: str | None = None, *, config_class: type | None = None,
                        replace: bool = False) -> None:
    """Register `factory(market_config, value_per_click, rng) -> BidPolicy` under `name`.

    `description` is one line (default: the factory's `description` attribute or docstring);
    `config_class` the dataclass of its own settings; a taken name needs `replace=True`.
    """
    BID_POLICIES.register(name, factory, description, config_class=config_class,
                          replace=replace)


def bid_policy_names() -> list[str]:
    return BID_POLICIES.names()


def bid_policy_descriptions() -> dict[str, str]:
    """{name: one-line description} of every registered bid policy."""
    return BID_POLICIES.describe()


def check_bidding(spec: str) -> None:
    """Check `market.bidding`: one registered name (or alias) or a population like
    ``"vm:50,um:50"``; raises ConfigError naming the choices."""
    if ":" in spec:
        parse_population(spec)
    else:
        BID_POLICIES.canonical(spec)


def make_bid_policy(name: str, market_config, value: float, rng: np.random.Generator,
                    bid_policies: BidPolicyConfig | None = None) -> BidPolicy:
    """One advertiser's policy: ``factory(market_config, value, rng)``, plus ``settings=`` (its
    table ``[bid_policies.<name>]`` of the run config's `bid_policies` section) when the policy
    was registered with a config class."""
    policy = BID_POLICIES.build(name, bid_policies or BidPolicyConfig(), "bid_policies",
                                market_config, value, rng)
    if not isinstance(policy, BidPolicy):
        raise TypeError(f"bid policy {name!r} built a {type(policy).__name__}; bid policies "
                        "subclass llmauction_sim.BidPolicy")
    return policy


# ------------------------------------------------------------------------------------------------
# agents
# ------------------------------------------------------------------------------------------------

class UserAgent(mesa.Agent):
    """A user profile with its queries; asks one not yet asked (then repeats) when picked."""

    def __init__(self, model: mesa.Model, profile: UserProfile,
                 queries: Sequence[tuple[str, str]]):
        super().__init__(model)
        if not queries:
            raise ValueError(f"user {profile.user_id} has no queries")
        self.profile = profile
        self.queries = list(queries)  # (query_id, text)
        self.asked: set[str] = set()
        self.clicks = 0

    def next_query(self, rng: np.random.Generator) -> tuple[str, str]:
        fresh = [q for q in self.queries if q[0] not in self.asked]
        pool = fresh or self.queries
        query = pool[int(rng.integers(len(pool)))]
        self.asked.add(query[0])
        return query

    def state(self) -> dict:
        return {"asked": sorted(self.asked), "clicks": self.clicks}

    def load_state(self, state: dict) -> None:
        self.asked, self.clicks = set(state["asked"]), int(state["clicks"])


class AdvertiserAgent(mesa.Agent):
    """One ad's advertiser: a private value per click, a bid policy, and running totals."""

    def __init__(self, model: mesa.Model, ad: Ad, value_per_click: float, policy: BidPolicy):
        super().__init__(model)
        self.ad = ad
        self.value_per_click = float(value_per_click)
        self.policy = policy
        self.bid = math.nan  # the latest bid
        self.auctions = 0
        self.exposures = 0
        self.clicks = 0
        self.spend = 0.0

    @property
    def ad_id(self) -> str:
        return self.ad.id

    @property
    def value(self) -> float:
        """Value earned so far: value per click x clicks."""
        return self.value_per_click * self.clicks

    @property
    def roi(self) -> float:
        """Value earned / spend (NaN before any spend)."""
        return self.value / self.spend if self.spend > 0 else math.nan

    @property
    def utility(self) -> float:
        return self.value - self.spend

    def place_bid(self, request_context: Any, rng: np.random.Generator) -> float:
        self.bid = float(self.policy.bid(self, request_context, rng))
        if not math.isfinite(self.bid) or self.bid < 0:
            raise ValueError(f"policy {self.policy.name!r} of {self.ad_id} bid {self.bid}; bids "
                             "must be finite and >= 0")
        self.auctions += 1
        return self.bid

    def settle(self, bid: float, exposed: bool, clicks: int, payment: float) -> None:
        self.exposures += int(exposed)
        self.clicks += clicks
        self.spend += payment
        self.policy.observe(self, AuctionOutcome(bid, exposed, clicks, payment,
                                                 self.value_per_click * clicks))

    def state(self) -> dict:
        return {"bid": self.bid, "auctions": self.auctions, "exposures": self.exposures,
                "clicks": self.clicks, "spend": self.spend, "policy": self.policy.state()}

    def load_state(self, state: dict) -> None:
        self.bid = float(state["bid"])
        self.auctions, self.exposures = int(state["auctions"]), int(state["exposures"])
        self.clicks, self.spend = int(state["clicks"]), float(state["spend"])
        self.policy.load_state(state["policy"])


class AuctioneerAgent(mesa.Agent):
    """Runs the market's mechanism on a round's auctions and keeps the revenue."""

    def __init__(self, model: mesa.Model, mechanism: Mechanism):
        super().__init__(model)
        self.mechanism = mechanism
        self.revenue = 0.0

    def allocate(self, requests: Sequence[AuctionRequest], rng: np.random.Generator
                 ) -> list[Allocation]:
        return self.mechanism.allocate(requests, rng)

    def charge(self, request: AuctionRequest, allocation: Allocation, clicked: Sequence[str]
               ) -> dict[str, float]:
        payments = self.mechanism.payments(request, allocation, clicked)
        self.revenue += sum(payments.values())
        return payments

    def state(self) -> dict:
        return {"revenue": self.revenue}

    def load_state(self, state: dict) -> None:
        self.revenue = float(state["revenue"])
