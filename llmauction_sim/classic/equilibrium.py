"""Learning dynamics of bidders on a classic auction (first price, second price, GSP).

Each round draws values per click and click-through rates for `auctions_per_round` auctions, asks every
advertiser's policy for its multiplier (bid = multiplier * value), runs all auctions at once, and gives
each advertiser its outcome plus the counterfactual value and spend of every shading factor on the grid
(others' bids fixed). The run records per round and per advertiser: multiplier (shading), mean bid,
value, spend, clicks, utility, ROI, ROI violation, budget use and cumulative regret against the best
fixed shading factor in hindsight; and per round the market's revenue, welfare, liquid welfare and a
convergence diagnostic. `run_equilibrium` returns these tables and, given `out`, writes
OUT/rounds.parquet, OUT/market.parquet, OUT/config.json and OUT/summary.json (atomically), and
checkpoints the whole loop (bidders, random generator, running totals) to OUT/.state/loop.pkl
every `checkpoint_every` rounds, so `resume=True` continues an interrupted run exactly: the result
equals the uninterrupted run's.

Regret (per advertiser, cumulative after t rounds, in value units):
- utility maximizers, truthful, fixed_shading and fixed_bid bidders:
  ``max_g sum_t U_t(g) - sum_t U_t(played)`` with ``U = value - payment``;
- value maximizers: ``max {sum_t V_t(g) : sum_t V_t(g) >= tau * sum_t P_t(g), budget kept} -
  sum_t V_t(played)``, the value lost against the best fixed factor that meets the constraints.

Liquid welfare is ``sum_i min(B_i, V_i / tau_i)`` (willingness to pay; ``tau = 1`` and ``B = inf`` for
advertisers without those constraints).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmauction_sim.classic.auctions import (
    classic_auction_names,
    counterfactual_outcomes,
    make_classic_auction,
)
from llmauction_sim.classic.bidding import (
    Bidders,
    PopulationEntry,
    RoundFeedback,
    ValueSampler,
    default_grid,
    parse_population,
)
from llmauction_sim.config import ConfigError, RunConfig, ValueConfig
from llmauction_sim.manifest import write_json
from llmauction_sim.runfolder import (
    atomic_parquet,
    check_memory,
    classic_equilibrium_bytes,
    open_run_folder,
)


def check_classic_mechanism(name: str) -> None:
    if name not in classic_auction_names():
        raise ConfigError(f"mechanism {name!r} is not a classic auction; the classic dynamics run "
                          f"{', '.join(classic_auction_names())}; market mechanisms (pretrained, "
                          "llm_auction, ...) run in the LLM market (llmauction_sim.market."
                          "equilibrium)")


@dataclass
class EquilibriumResult:
    rounds: pd.DataFrame   # one row per (round, advertiser)
    market: pd.DataFrame   # one row per round
    summary: dict[str, Any]


def _regret(cum_v, cum_p, own_v, own_p, tau, budget_total, is_vm) -> np.ndarray:
    utility_regret = (cum_v - cum_p).max(axis=1) - (own_v - own_p)
    feasible = (cum_v >= tau[:, None] * cum_p * (1 - 1e-9)) & (cum_p <= budget_total[:, None])
    best_value = np.where(feasible, cum_v, 0.0).max(axis=1)
    return np.where(is_vm, best_value - own_v, utility_regret)


def run_equilibrium(mechanism: str = "first_price",
                    population: str | list[PopulationEntry] | list[dict] = "vm:4,um:4",
                    rounds: int = 300, auctions_per_round: int = 1000, seed: int = 0, *,
                    values: ValueConfig | None = None, slot_weights=(1.0,), reserve: float = 0.0,
                    ctr_range: tuple[float, float] = (1.0, 1.0), grid: np.ndarray | None = None,
                    out: str | Path | None = None, resume: bool = False,
                    checkpoint_every: int | None = None) -> EquilibriumResult:
    """Run the bidders' learning dynamics on a classic mechanism; see the module docstring."""
    check_classic_mechanism(mechanism)
    settings = json.dumps({"mechanism": mechanism, "population": str(population), "seed": seed,
                           "auctions": auctions_per_round, "values": repr(values),
                           "slot_weights": list(map(float, slot_weights)),
                           "reserve": float(reserve), "ctr_range": list(ctr_range),
                           "grid": None if grid is None else np.asarray(grid).tolist()})
    checkpoint = None if out is None else Path(out) / ".state" / "loop.pkl"
    every = checkpoint_every or max(1, rounds // 20)
    mech = make_classic_auction(mechanism)
    entries = (population if population and isinstance(population, list)
               and isinstance(population[0], PopulationEntry) else parse_population(population))
    rng = np.random.default_rng(seed)
    grid = default_grid() if grid is None else np.asarray(grid, dtype=float)
    bidders = Bidders(entries, rng, grid)
    n, num_a = bidders.n, auctions_per_round
    sampler = ValueSampler(values or ValueConfig(), n, rng)
    weights = np.asarray(slot_weights, dtype=float)
    tau, budget = bidders.tau, bidders.budget
    is_vm = np.array([t == "value_maximizer" for t in bidders.types])
    lo, hi = ctr_range

    cum_cf_v = np.zeros((n, grid.size))
    cum_cf_p = np.zeros((n, grid.size))
    cum_v, cum_p = np.zeros(n), np.zeros(n)
    rows: dict[str, list] = {k: [] for k in ("multiplier", "bid", "value", "spend", "clicks",
                                             "regret")}
    market = {k: [] for k in ("revenue", "welfare", "liquid_welfare")}
    start = 0
    if resume and checkpoint is not None and checkpoint.is_file():
        saved = pickle.loads(checkpoint.read_bytes())  # the run's own state, written below
        if saved["settings"] != settings:
            raise ConfigError(f"{out} holds an equilibrium run with other settings; resume it "
                              "with its own config, or give another --out")
        if saved["t"] > rounds:
            raise ConfigError(f"{out} has {saved['t']} finished rounds; resuming with rounds = "
                              f"{rounds} would drop some: pass rounds >= {saved['t']}")
        (start, rng, bidders, sampler, cum_cf_v, cum_cf_p, cum_v, cum_p, rows,
         market) = (saved[k] for k in ("t", "rng", "bidders", "sampler", "cum_cf_v", "cum_cf_p",
                                       "cum_v", "cum_p", "rows", "market"))

    def save(t: int) -> None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint.with_name(f".{checkpoint.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps({
            "settings": settings, "t": t, "rng": rng, "bidders": bidders, "sampler": sampler,
            "cum_cf_v": cum_cf_v, "cum_cf_p": cum_cf_p, "cum_v": cum_v, "cum_p": cum_p,
            "rows": rows, "market": market}))
        os.replace(tmp, checkpoint)

    for t in range(start, rounds):
        mult = bidders.start_round().copy()
        vals = np.asarray(sampler.draw(num_a))
        ctr = None if lo == hi == 1.0 else rng.uniform(lo, hi, size=(num_a, n))
        bids = bidders.bids(vals)
        result = mech(bids, ctr=ctr, slot_weights=weights, reserve=reserve, rng=rng)
        value = (vals * result.clicks).sum(axis=0)
        spend = result.payment.sum(axis=0)
        clicks = result.clicks.sum(axis=0)
        cf_clicks, cf_pay = counterfactual_outcomes(
            mechanism, bids, grid[None, None, :] * vals[:, :, None], ctr=ctr,
            slot_weights=weights, reserve=reserve)
        cf_v = np.einsum("an,ang->ng", vals, cf_clicks)
        cf_p = cf_pay.sum(axis=0)
        top = vals * weights[0] * (1.0 if ctr is None else ctr)
        bidders.update(RoundFeedback(value, spend, clicks, top.sum(axis=0), cf_v, cf_p))
        cum_cf_v += cf_v
        cum_cf_p += cf_p
        cum_v += value
        cum_p += spend
        regret = _regret(cum_cf_v, cum_cf_p, cum_v, cum_p, tau, budget * (t + 1), is_vm)
        for key, arr in (("multiplier", mult), ("bid", bids.mean(axis=0)), ("value", value),
                         ("spend", spend), ("clicks", clicks), ("regret", regret)):
            rows[key].append(arr)
        market["revenue"].append(spend.sum())
        market["welfare"].append(value.sum())
        market["liquid_welfare"].append(np.minimum(budget, value / tau).sum())
        if checkpoint is not None and ((t + 1) % every == 0 or t + 1 == rounds):
            save(t + 1)

    table = {k: np.asarray(v) for k, v in rows.items()}           # each [rounds, n]
    utility = table["value"] - table["spend"]
    with np.errstate(divide="ignore", invalid="ignore"):
        roi = np.where(table["spend"] > 0, table["value"] / table["spend"], np.nan)
        budget_use = table["spend"] / budget
    violated = table["value"] < tau * table["spend"] * (1 - 1e-6)
    rounds_df = pd.DataFrame({
        "round": np.repeat(np.arange(rounds), n), "advertiser": np.tile(np.arange(n), rounds),
        "type": np.tile(np.array(bidders.types), rounds),
        "multiplier": table["multiplier"].ravel(), "bid": table["bid"].ravel(),
        "value": table["value"].ravel(), "spend": table["spend"].ravel(),
        "clicks": table["clicks"].ravel(), "utility": utility.ravel(), "roi": roi.ravel(),
        "roi_violated": violated.ravel(), "budget_use": budget_use.ravel(),
        "cumulative_regret": table["regret"].ravel()})
    window = max(1, rounds // 10)
    m = table["multiplier"]
    smooth = pd.DataFrame(m).rolling(window, min_periods=window).mean().to_numpy()
    change = np.full(rounds, np.nan)
    if rounds > window:
        change[window:] = np.abs(smooth[window:] - smooth[:-window]).mean(axis=1)
    market_df = pd.DataFrame({"round": np.arange(rounds), **{k: np.asarray(v)
                                                             for k, v in market.items()},
                              "bid_change": change})

    last = slice(rounds - max(1, rounds // 10), rounds)
    total = rounds * num_a
    mean_values = sampler.mean_values()
    advertisers = []
    for i in range(n):
        tv, tp = table["value"][:, i].sum(), table["spend"][:, i].sum()
        advertisers.append({
            "id": i, "type": bidders.types[i], "value": float(mean_values[i]),
            "tau": float(tau[i]), "budget": None if np.isinf(budget[i]) else float(budget[i]),
            "final_multiplier": float(m[-1, i]),
            "final_bid": float(m[-1, i] * mean_values[i]),
            "mean_shading": float(m[last, i].mean()),
            "roi": float(tv / tp) if tp > 0 else None,
            "roi_last": (float(table["value"][last, i].sum() / table["spend"][last, i].sum())
                         if table["spend"][last, i].sum() > 0 else None),
            "utility": float((tv - tp) / total), "value_won": float(tv / total),
            "spend": float(tp / total), "violation_rate": float(violated[:, i].mean()),
            "budget_use": (None if np.isinf(budget[i])
                           else float(table["spend"][:, i].mean() / budget[i])),
            "regret": float(table["regret"][-1, i] / total),
            "regret_total": float(table["regret"][-1, i])})
    summary = {
        "mechanism": mechanism, "rounds": rounds, "auctions_per_round": num_a, "seed": seed,
        "advertisers": advertisers,
        "revenue": float(market_df["revenue"].sum() / total),
        "welfare": float(market_df["welfare"].sum() / total),
        "liquid_welfare": float(market_df["liquid_welfare"].sum() / total),
        "revenue_last": float(market_df["revenue"].iloc[last].sum() / (len(range(rounds)[last])
                                                                       * num_a)),
        "bid_change": None if np.isnan(change[-1]) else float(change[-1]),
        "units": "revenue, welfare, utility, value_won, spend and regret are per auction; "
                 "regret_total is cumulative over the run"}
    if out is not None:
        out = Path(out)
        atomic_parquet(rounds_df, out / "rounds.parquet")
        atomic_parquet(market_df, out / "market.parquet")
        write_json(out / "summary.json", summary)
    return EquilibriumResult(rounds_df, market_df, summary)


def run_from_config(config: RunConfig, out: str | Path | None = None, *,
                    resume: bool = False) -> EquilibriumResult:
    """`run_equilibrium` with every setting from the run config's `classic` section and its
    seed; also writes OUT/config.json.

    Without `resume`, a folder that already holds a run is refused rather than overwritten; with
    it, the run continues from its last checkpoint with its own config (`rounds` may only grow).
    """
    c = config.classic
    check_classic_mechanism(c.mechanism)
    if out is not None:
        saved = Path(out) / "config.json"
        if saved.is_file() and not resume:
            raise ConfigError(f"{out} already holds an equilibrium run; pass --resume to continue "
                              "it or give another --out")
        if resume and saved.is_file():
            old = RunConfig.from_dict(json.loads(saved.read_text()))
            if (old.seed, old.classic.replace(rounds=c.rounds)) != (config.seed, c):
                raise ConfigError(f"{out} holds an equilibrium run with another config (only "
                                  "--rounds may change on --resume); give another --out")
        write_json(saved, config.to_dict())
    return run_equilibrium(
        c.mechanism, c.advertisers, c.rounds, c.auctions_per_round, config.seed,
        values=c.values, slot_weights=c.slot_weights, reserve=c.reserve,
        ctr_range=(c.ctr_low, c.ctr_high), grid=default_grid(c.grid_points, c.grid_max),
        out=out, resume=resume)


def run_classic_equilibrium(config: RunConfig, out: str | Path, resume: bool = False):
    """`run_from_config` into a checked, locked run folder, after a memory estimate."""
    c = config.classic
    n = sum(e.num_copies for e in parse_population(c.advertisers))
    check_memory(classic_equilibrium_bytes(n, c.auctions_per_round, c.grid_points),
                 f"the classic equilibrium with {n:,} advertisers x {c.auctions_per_round:,} "
                 f"auctions per round x {c.grid_points} grid points",
                 "use fewer advertisers, auctions per round (--auctions-per-round) or "
                 "grid_points")
    with open_run_folder(out, "equilibrium", resume=resume) as folder:
        folder.started(config)
        result = run_from_config(config, out=out, resume=resume)
        folder.finished()
    return result


def format_summary(summary: dict[str, Any]) -> str:
    """A short text table of the summary (for the CLI)."""
    lines = [f"{summary['mechanism']}: {summary['rounds']} rounds x "
             f"{summary['auctions_per_round']} auctions; per auction: revenue "
             f"{summary['revenue']:.4f}, welfare {summary['welfare']:.4f}, liquid welfare "
             f"{summary['liquid_welfare']:.4f}",
             f"{'id':>3} {'type':>17} {'tau':>5} {'shading':>8} {'roi':>7} {'utility':>8} "
             f"{'viol.':>6} {'regret':>8}"]
    for a in summary["advertisers"]:
        roi = "n/a" if a["roi"] is None else f"{a['roi']:.3f}"
        lines.append(f"{a['id']:>3} {a['type']:>17} {a['tau']:>5.2f} {a['mean_shading']:>8.3f} "
                     f"{roi:>7} {a['utility']:>8.4f} {a['violation_rate']:>6.2f} "
                     f"{a['regret']:>8.4f}")
    return "\n".join(lines)


def classic_config(config: RunConfig, **flags: Any) -> RunConfig:
    """`config` with the command line's classic settings (`mechanism`, `advertisers`, `rounds`,
    `auctions_per_round`; None = keep the config's) in its `classic` section, checked."""
    given = {k: v for k, v in flags.items() if v is not None}
    config = config.replace(classic=config.classic.replace(**given).to_dict())
    check_classic_mechanism(config.classic.mechanism)
    parse_population(config.classic.advertisers)
    return config
