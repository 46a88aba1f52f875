"""Advertisers that learn to bid: policies vectorized over groups of advertisers (pure numpy).

Every policy bids linearly in the value per click: advertiser i bids ``b_ai = m_i * v_ai`` in auction a,
where ``m_i`` is its bid multiplier (its shading factor when ``m_i <= 1``), chosen once per round and
updated from the round's outcome. Policies, registered by name (see `make_policy`):

- ``truthful``: ``m = 1`` (bid the value).
- ``fixed_shading``: a constant shading factor ``m = shading``; ``fixed_bid``: a constant bid
  ``bid`` per click (not the market's ``fixed`` bid policy, which draws one bid per ad).
- ``value_maximizer`` (VM): maximizes value ``V = sum v*x`` subject to ``V >= tau * spend`` (target ROI
  tau) and, optionally, ``spend <= budget`` per round. Like an auto-bidder it starts at ``m = 1`` and
  paces the multiplier on the tightest constraint's relative slack
  ``e = min((V - tau*P) / max(V, tau*P), (B - P) / B)``. A round that won nothing says nothing
  about the ROI, so its slack is 0 (or the budget slack when there is a budget): counting it as
  room to bid more (``e = 1``) makes a bidder that wins rarely, as in a market with many bidders,
  raise its bid until it wins half the rounds, far past the ROI target. A bidder priced out
  entirely would then never move, so a round without a win also probes: ``m *= 1 + probe``
  (capped at ``max_multiplier``) when the counterfactual feedback shows a larger grid factor
  winning value within the ROI target (and budget), which holds only below the bid that meets the
  target; without counterfactual feedback, after ``patience`` idle rounds in a row.
  ``dual``: ``log m += lr * e`` (dual-gradient / multiplicative pacing);
  ``pid``:  ``log m = log m0 + kp*e_t + ki*sum(e) + kd*(e_t - e_{t-1})`` (a probe raises m0).
  Under first price per click ``V / P = 1 / m``, so the ROI constraint binds at ``m = 1/tau``: the
  optimal bid is ``v / tau`` (Thm 4.5).
- ``utility_maximizer`` (UM): maximizes ``sum v*x - payment`` over shading factors on a grid ``g``.
  ``hedge``: follow-the-regularized-leader Hedge; each round it samples ``m`` from
  ``p ∝ exp(eta_t * U_cum)`` with ``eta_t = lr * sqrt(ln G) * t^-eta_decay`` (default 1/2, the
  anytime no-regret rate; 0 concentrates on the leader, see `UtilityMaximizer`) and ``U_cum`` the
  cumulative counterfactual utility of every grid factor normalized by the round's total value (full
  information, computable on classic auctions); without counterfactual feedback it falls back to
  EXP3's importance-weighted estimate for the played factor.
  ``best_response``: plays the grid factor with the best discounted counterfactual utility
  ``U_cum <- gamma * U_cum + U_t`` (smoothed best response / fictitious play).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmauction_sim.config import ConfigError, ValueConfig
from llmauction_sim.registry import Registry

# --------------------------------------------------------------------------------------------------
# values per click
# --------------------------------------------------------------------------------------------------


class ValueSampler:
    """Values per click ``[A, n]`` for n advertisers, drawn from a seeded Generator."""

    def __init__(self, config: ValueConfig, num_advertisers: int, rng: np.random.Generator):
        self.config, self.n, self.rng = config, num_advertisers, rng
        self.fixed = self._draw((num_advertisers,)) if config.redraw == "once" else None

    def _draw(self, shape) -> np.ndarray:
        c = self.config
        if c.distribution == "uniform":
            return self.rng.uniform(c.low, c.high, size=shape)
        if c.distribution == "lognormal":
            return self.rng.lognormal(c.log_mean, c.log_sigma, size=shape)
        return np.full(shape, c.high)

    def draw(self, num_auctions: int) -> np.ndarray:
        if self.fixed is not None:
            return np.broadcast_to(self.fixed, (num_auctions, self.n))
        return self._draw((num_auctions, self.n))

    def mean_values(self) -> np.ndarray:
        """Each advertiser's expected value per click."""
        if self.fixed is not None:
            return self.fixed.copy()
        c = self.config
        mean = {"uniform": (c.low + c.high) / 2,
                "lognormal": float(np.exp(c.log_mean + c.log_sigma ** 2 / 2)),
                "constant": c.high}[c.distribution]
        return np.full(self.n, mean)


# --------------------------------------------------------------------------------------------------
# feedback and policies
# --------------------------------------------------------------------------------------------------


@dataclass
class RoundFeedback:
    """What a group of m advertisers observed in one round (sums over the round's auctions).

    ``cf_value`` / ``cf_spend`` (``[m, G]``) are the value and spend each advertiser would have got
    by bidding ``grid[g] * v`` in every auction of the round, others' bids fixed; None where they
    cannot be computed (then learners use bandit feedback).
    """

    value: np.ndarray                 # [m] sum of v * clicks
    spend: np.ndarray                 # [m] sum of payments
    clicks: np.ndarray                # [m] sum of (expected) clicks
    max_value: np.ndarray             # [m] sum of v * (clicks in the top slot): a scale
    cf_value: np.ndarray | None = None
    cf_spend: np.ndarray | None = None

    def subset(self, idx: slice) -> RoundFeedback:
        def cut(a):
            return None if a is None else a[idx]

        return RoundFeedback(self.value[idx], self.spend[idx], self.clicks[idx],
                             self.max_value[idx], cut(self.cf_value), cut(self.cf_spend))


class BiddingPolicy:
    """A group of `num` advertisers of one type; bids are ``multipliers()[i] * value``."""

    type_name = "policy"

    def __init__(self, num: int, rng: np.random.Generator, grid: np.ndarray, **params: Any):
        if params:
            raise ConfigError(f"{self.type_name}: unknown parameters {sorted(params)}")
        self.num, self.rng, self.grid = num, rng, np.asarray(grid, dtype=float)
        self.multiplier = np.ones(num)

    @property
    def tau(self) -> np.ndarray:
        """Target ROI (1 for advertisers without an ROI constraint)."""
        return np.ones(self.num)

    @property
    def budget(self) -> np.ndarray:
        """Budget per round (inf when none)."""
        return np.full(self.num, np.inf)

    def start_round(self) -> np.ndarray:
        """Choose this round's multipliers; returns them (``[num]``)."""
        return self.multiplier

    def bids(self, values: np.ndarray) -> np.ndarray:
        """Bids ``[A, num]`` for values per click ``[A, num]`` with the current multipliers."""
        return values * self.multiplier

    def update(self, feedback: RoundFeedback) -> None:
        """Learn from the round's outcome (no-op for non-learning policies)."""


class Truthful(BiddingPolicy):
    """Bids the value per click."""

    type_name = "truthful"


class FixedShading(BiddingPolicy):
    """A constant shading factor: bids ``shading * value`` per click."""

    type_name = "fixed_shading"

    def __init__(self, num, rng, grid, shading: float = 1.0):
        super().__init__(num, rng, grid)
        if shading < 0:
            raise ConfigError(f"fixed_shading: shading = {shading} must be >= 0")
        self.multiplier = np.full(num, float(shading))


class FixedBid(BiddingPolicy):
    """A constant bid per click, whatever the value (the multiplier stays 1)."""

    type_name = "fixed_bid"

    def __init__(self, num, rng, grid, bid: float):
        super().__init__(num, rng, grid)
        if bid < 0:
            raise ConfigError(f"fixed_bid: bid = {bid} must be >= 0")
        self.fixed_bid = float(bid)

    def bids(self, values):
        return np.full(np.shape(values), self.fixed_bid)


class ValueMaximizer(BiddingPolicy):
    """Maximize value s.t. ROI >= tau (and spend <= budget per round); paces a bid multiplier."""

    type_name = "value_maximizer"

    def __init__(self, num, rng, grid, tau: float = 1.25, budget: float | None = None,
                 controller: str = "dual", lr: float = 0.3, kp: float = 0.1, ki: float = 0.2,
                 kd: float = 0.0, initial_multiplier: float = 1.0, max_multiplier: float = 10.0,
                 probe: float = 0.05, patience: int = 10):
        super().__init__(num, rng, grid)
        if tau <= 0:
            raise ConfigError(f"value_maximizer: tau = {tau} must be > 0")
        if probe < 0 or patience < 1:
            raise ConfigError(f"value_maximizer: probe = {probe} must be >= 0 and patience = "
                              f"{patience} >= 1")
        if initial_multiplier <= 0:
            raise ConfigError(f"value_maximizer: initial_multiplier = {initial_multiplier} must be "
                              "> 0 (a multiplicative controller cannot leave 0)")
        if budget is not None and budget <= 0:
            raise ConfigError(f"value_maximizer: budget = {budget} must be > 0 (or None)")
        if controller not in ("dual", "pid"):
            raise ConfigError(f"value_maximizer: controller = {controller!r}; use dual or pid")
        self._tau, self._budget = float(tau), budget
        self.controller, self.lr, self.kp, self.ki, self.kd = controller, lr, kp, ki, kd
        self.max_multiplier = float(max_multiplier)
        self.probe, self.patience = float(probe), int(patience)
        self.log_m0 = np.full(num, np.log(initial_multiplier))
        self.multiplier = np.full(num, float(initial_multiplier))
        self.integral = np.zeros(num)
        self.prev_error = np.zeros(num)
        self.idle = np.zeros(num, dtype=np.int64)   # consecutive rounds without a win

    @property
    def tau(self):
        return np.full(self.num, self._tau)

    @property
    def budget(self):
        return np.full(self.num, np.inf if self._budget is None else float(self._budget))

    def slack(self, feedback: RoundFeedback) -> np.ndarray:
        """Relative slack of the tightest constraint, in [-1, 1] (positive: room to bid more)."""
        v, p = feedback.value, self._tau * feedback.spend
        denom = np.maximum(v, p)
        error = np.where(denom > 0, (v - p) / np.where(denom > 0, denom, 1.0), 0.0)
        if self._budget is not None:
            error = np.minimum(error, np.clip((self._budget - feedback.spend) / self._budget,
                                              -1.0, 1.0))
        return error

    def should_probe(self, feedback: RoundFeedback) -> np.ndarray:
        """Whether a round without a win shows that a higher bid would have paid off.

        A priced-out bidder sees no value and no spend, so its slack says nothing and it would
        never move. With counterfactual feedback it rises when a larger grid factor would have won
        value within the ROI target (and budget): true below the bid that meets the target, false
        above it, so the ROI target still holds. Without it, only after `patience` idle rounds in a
        row: waiting keeps the probe off a bidder that merely wins rarely, whose ROI it would bias.
        """
        idle = (feedback.value <= 0) & (feedback.spend <= 0)
        self.idle = np.where(idle, self.idle + 1, 0)
        if feedback.cf_value is None:
            return self.idle >= self.patience
        v, p = feedback.cf_value, feedback.cf_spend
        feasible = ((self.grid[None, :] > self.multiplier[:, None]) & (v > 0)
                    & (v >= self._tau * p) & (p <= self.budget[:, None]))
        return idle & feasible.any(axis=1)

    def update(self, feedback):
        error = self.slack(feedback)
        step = np.where(self.should_probe(feedback), np.log1p(self.probe), 0.0)
        if self.controller == "dual":
            log_m = np.log(self.multiplier) + self.lr * error + step
        else:
            self.integral += error
            self.log_m0 = np.minimum(self.log_m0 + step, np.log(self.max_multiplier))
            log_m = (self.log_m0 + self.kp * error + self.ki * self.integral
                     + self.kd * (error - self.prev_error))
        self.prev_error = error
        self.multiplier = np.minimum(np.exp(log_m), self.max_multiplier)


class UtilityMaximizer(BiddingPolicy):
    """Maximize value - payment by learning a shading factor on the grid (Hedge or best response).

    ``eta_decay`` sets Hedge's step ``eta_t = lr * sqrt(ln G) * t^-eta_decay``. The default 1/2
    keeps the worst-case regret bound but leaves the play spread: with four bidders on first price
    the mean shading stays 0.01-0.03 below (n-1)/n. Smaller values sharpen the weights faster and
    converge to a pure factor in stationary games (half the gap at 0 after 150 rounds), without the
    adversarial regret guarantee.
    """

    type_name = "utility_maximizer"

    def __init__(self, num, rng, grid, learner: str = "hedge", lr: float = 30.0,
                 gamma: float = 0.9, eta_decay: float = 0.5):
        super().__init__(num, rng, grid)
        if learner not in ("hedge", "best_response"):
            raise ConfigError(f"utility_maximizer: learner = {learner!r}; use hedge or "
                              "best_response")
        if not 0 <= eta_decay <= 1:
            raise ConfigError(f"utility_maximizer: eta_decay = {eta_decay} must be in [0, 1]")
        self.learner, self.lr, self.gamma = learner, float(lr), float(gamma)
        self.eta_decay = float(eta_decay)
        size = self.grid.size
        self.cum_utility = np.zeros((num, size))
        self.t = 0
        self.choice = np.full(num, size - 1)   # start at the largest factor (1 = truthful)
        self.probs = np.full((num, size), 1.0 / size)
        self.multiplier = self.grid[self.choice].copy()

    def _eta(self) -> float:
        # t ** (2 * 0.5) is t exactly, so the default is the anytime rate lr * sqrt(ln G / t).
        return self.lr * np.sqrt(np.log(max(self.grid.size, 2))
                                 / max(self.t, 1) ** (2 * self.eta_decay))

    def start_round(self):
        if self.learner == "hedge" and self.t > 0:
            logits = self._eta() * self.cum_utility
            logits -= logits.max(axis=1, keepdims=True)
            self.probs = np.exp(logits)
            self.probs /= self.probs.sum(axis=1, keepdims=True)
            u = self.rng.random((self.num, 1))
            self.choice = np.minimum((self.probs.cumsum(axis=1) < u).sum(axis=1),
                                     self.grid.size - 1)
        elif self.learner == "best_response" and self.t > 0:
            self.choice = self.cum_utility.argmax(axis=1)
        self.multiplier = self.grid[self.choice].copy()
        return self.multiplier

    def update(self, feedback):
        self.t += 1
        scale = np.maximum(feedback.max_value, 1e-12)[:, None]
        if feedback.cf_value is not None:
            utility = (feedback.cf_value - feedback.cf_spend) / scale
        else:  # bandit feedback: importance-weighted estimate for the played factor (EXP3)
            utility = np.zeros_like(self.cum_utility)
            rows = np.arange(self.num)
            played = (feedback.value - feedback.spend) / scale[:, 0]
            utility[rows, self.choice] = played / self.probs[rows, self.choice]
        if self.learner == "best_response":
            self.cum_utility = self.gamma * self.cum_utility + utility
        else:
            self.cum_utility += utility


# --------------------------------------------------------------------------------------------------
# registry and population
# --------------------------------------------------------------------------------------------------

PolicyFactory = Callable[..., BiddingPolicy]
# The market's own `fixed` bid policy (market.agents) draws one bid per ad; here the two constant
# policies say which constant they hold (fixed_shading, fixed_bid) and there is no plain `fixed`.
CLASSIC_POLICIES: Registry[PolicyFactory] = Registry(
    "classic bidding policy", error=ConfigError,
    aliases={"vm": "value_maximizer", "um": "utility_maximizer"})
for _name, _factory, _description in (
        ("truthful", Truthful, "bids the value per click (multiplier 1)"),
        ("fixed_shading", FixedShading, "a constant shading factor: bids shading x value "
         "(named apart from the market's `fixed`, one bid per ad drawn once)"),
        ("fixed_bid", FixedBid, "a constant bid per click, given as bid=..., whatever the value "
         "(no plain `fixed` here: the market's `fixed` draws its bid)"),
        ("value_maximizer", ValueMaximizer, "maximizes value s.t. ROI >= tau (and a budget); "
         "paces a bid multiplier"),
        ("utility_maximizer", UtilityMaximizer, "maximizes value - payment over shading factors "
         "(Hedge or best response)")):
    CLASSIC_POLICIES.register(_name, _factory, _description)


def register_policy(name: str, factory: PolicyFactory, description: str | None = None, *,
                    replace: bool = False) -> None:
    """Register `factory(num, rng, grid, **params) -> BiddingPolicy` under `name`; `description`
    is one line (default: the factory's docstring); a taken name needs `replace=True`."""
    CLASSIC_POLICIES.register(name, factory, description, replace=replace)


def policy_names() -> list[str]:
    return CLASSIC_POLICIES.names()


def canonical_policy_name(name: str) -> str:
    return CLASSIC_POLICIES.canonical(name.strip().lower())


def make_policy(name: str, num: int = 1, *, rng: np.random.Generator | None = None,
                grid: np.ndarray | None = None, **params: Any) -> BiddingPolicy:
    """A policy group of `num` advertisers of type `name` (aliases vm, um) with `params`."""
    factory = CLASSIC_POLICIES.get(name.strip().lower())
    rng = rng if rng is not None else np.random.default_rng(0)
    grid = default_grid() if grid is None else grid
    try:
        return factory(num, rng, grid, **params)
    except TypeError as exc:
        raise ConfigError(f"{name}: bad parameters {params}: {exc}") from None


def default_grid(points: int = 51, high: float = 1.0) -> np.ndarray:
    """Shading factors 0, high/(points-1), ..., high."""
    return np.linspace(0.0, high, points)


@dataclass(frozen=True)
class PopulationEntry:
    type: str
    num_copies: int = 1
    params: dict = field(default_factory=dict)


def _parse_scalar(raw: str) -> Any:
    raw = raw.strip()
    if raw.lower() in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def parse_population(spec: str | Sequence[Mapping[str, Any]]) -> list[PopulationEntry]:
    """Parse ``"vm:4,um:4"`` (optionally ``"vm:2:tau=1.5:budget=20"``) or a list of
    ``{type, num_copies, params}`` dicts (AuctionGym style) into population entries."""
    entries = []
    if isinstance(spec, str):
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            fields = part.split(":")
            count, params = 1, {}
            for i, item in enumerate(fields[1:]):
                if "=" in item:
                    key, raw = item.split("=", 1)
                    params[key.strip()] = _parse_scalar(raw)
                elif i == 0:
                    try:
                        count = int(item)
                    except ValueError:
                        raise ConfigError(f"population entry {part!r}: the count after ':' must "
                                          "be an integer, e.g. vm:4") from None
                else:
                    raise ConfigError(f"population entry {part!r}: parameters look like key=value")
            entries.append(PopulationEntry(canonical_policy_name(fields[0]), count, params))
    else:
        for i, item in enumerate(spec):
            unknown = set(item) - {"type", "num_copies", "params"}
            if "type" not in item or unknown:
                raise ConfigError(f"population[{i}] = {dict(item)}: give keys type, num_copies, "
                                  "params")
            entries.append(PopulationEntry(canonical_policy_name(item["type"]),
                                           int(item.get("num_copies", 1)),
                                           dict(item.get("params", {}))))
    if not entries or any(e.num_copies < 1 for e in entries):
        raise ConfigError(f"population {spec!r} must name at least one advertiser, each count >= 1")
    return entries


class Bidders:
    """All advertisers of a population, in order: groups of policies over index slices."""

    def __init__(self, entries: Sequence[PopulationEntry], rng: np.random.Generator,
                 grid: np.ndarray | None = None):
        self.grid = default_grid() if grid is None else np.asarray(grid, dtype=float)
        self.groups: list[tuple[slice, BiddingPolicy]] = []
        self.types: list[str] = []
        start = 0
        for entry in entries:
            policy = make_policy(entry.type, entry.num_copies, rng=rng, grid=self.grid,
                                 **entry.params)
            self.groups.append((slice(start, start + entry.num_copies), policy))
            self.types += [entry.type] * entry.num_copies
            start += entry.num_copies
        self.n = start

    def _gather(self, attr: str) -> np.ndarray:
        out = np.empty(self.n)
        for idx, policy in self.groups:
            out[idx] = getattr(policy, attr)
        return out

    @property
    def tau(self) -> np.ndarray:
        return self._gather("tau")

    @property
    def budget(self) -> np.ndarray:
        return self._gather("budget")

    def start_round(self) -> np.ndarray:
        """Every advertiser's multiplier for this round (``[n]``)."""
        out = np.empty(self.n)
        for idx, policy in self.groups:
            out[idx] = policy.start_round()
        return out

    def bids(self, values: np.ndarray) -> np.ndarray:
        """Bids ``[A, n]`` for values per click ``[A, n]``."""
        out = np.empty(np.shape(values))
        for idx, policy in self.groups:
            out[:, idx] = policy.bids(values[:, idx])
        return out

    def update(self, feedback: RoundFeedback) -> None:
        for idx, policy in self.groups:
            policy.update(feedback.subset(idx))
