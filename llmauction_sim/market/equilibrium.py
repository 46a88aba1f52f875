"""Learning bidders in the LLM market: `llmauction equilibrium --mechanism <market mechanism>`.

The population (e.g. ``"vm:4,um:4"``) bids in an `AdMarket` whose catalog is cut to the
population's size (its first N ads, in catalog order), so every learner is a candidate in most
auctions. Each LLM round can be followed by `market.surrogate_rounds` rounds on the allocation
surrogate (market/surrogate.py). Writes the market's run folder under OUT/market and, in the format
of the classic command, OUT/rounds.parquet (per round and advertiser) and OUT/summary.json.

Regret is not reported here: the LLM market cannot say what another bid would have won.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from llmauction_sim.classic.bidding import parse_population
from llmauction_sim.config import ConfigError, RunConfig
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.market.joint import run_joint
from llmauction_sim.market.run import simulate
from llmauction_sim.runfolder import atomic_json, atomic_parquet, open_run_folder


def market_config(config: RunConfig, mechanism: str, advertisers: str, rounds: int) -> RunConfig:
    """`config` with the market running `advertisers` on `mechanism` for `rounds` LLM rounds."""
    size = sum(e.num_copies for e in parse_population(advertisers))
    k = config.retrieval.num_candidates
    overrides = [f"market.mechanism={mechanism}", f"market.bidding={advertisers}",
                 f"market.steps={rounds}"]
    if k == "all" or int(k) > size:
        overrides.append(f"retrieval.num_candidates={size}")
    return config.with_overrides(overrides)


def run_market_equilibrium(config: RunConfig, out: str | Path, *, resume: bool = False,
                           progress: bool = True, **resources) -> dict:
    """Run the market of `market_config(...)` into OUT/market; write OUT/rounds.parquet and
    OUT/summary.json; return the summary. With `market.rounds_per_epoch` > 0 the Ad-LLM is
    retrained by IRPO inside the market (market/joint.py)."""
    out = Path(out)
    # A population the catalog cannot seat fails here, before the run folder is opened.
    entries, sub = population_catalog(config, resources.pop("catalog", None))
    with open_run_folder(out, "equilibrium", inputs={"data": config.market.data},
                         resume=resume) as folder:
        folder.started(config)
        if config.market.rounds_per_epoch:
            joint = run_joint(config, out, sub, population_types(entries), resume=resume,
                              progress=progress, **resources)
        else:
            simulate(config, out / "market", resume=resume, progress=progress, catalog=sub,
                     **resources)
            joint = {}
        summary = write_outputs(config, out, entries, sub, **joint)
        folder.finished()
    return summary


def population_catalog(config: RunConfig, catalog=None):
    """(population entries, the catalog cut to the population's size)."""
    entries = parse_population(config.market.bidding)
    size = sum(e.num_copies for e in entries)
    catalog = catalog or load_catalog(config.data.catalog)
    if size > len(catalog):
        raise ConfigError(f"--advertisers has {size} advertisers but the catalog has "
                          f"{len(catalog)} ads; use at most {len(catalog)}")
    return entries, catalog[:size]


def population_types(entries) -> list[str]:
    """Each advertiser's type, in catalog order (copies of an entry are consecutive)."""
    return [e.type for e in entries for _ in range(e.num_copies)]


def write_outputs(config: RunConfig, out: Path, entries, sub, **extra) -> dict:
    """OUT/rounds.parquet and OUT/summary.json (plus `extra` keys) from the run in OUT/market."""
    adv = pd.read_parquet(out / "market" / "advertisers.parquet")
    types = population_types(entries)
    taus = [float(e.params.get("tau", 1.25)) if e.type == "value_maximizer" else 1.0
            for e in entries for _ in range(e.num_copies)]
    info = {ad.id: (i, t, tau) for i, (ad, t, tau) in enumerate(zip(sub, types, taus))}
    adv = adv.sort_values(["ad_id", "step"])
    per_round = []
    for ad_id, g in adv.groupby("ad_id", sort=False):
        i, kind, tau = info[ad_id]
        cum = g[["clicks", "spend", "value", "auctions"]].to_numpy(dtype=float)
        inc = np.diff(np.vstack([np.zeros((1, 4)), cum]), axis=0)
        value_per_click = float(g["value_per_click"].iloc[0])
        for step, bid, (clicks, spend, value, auctions) in zip(g["step"], g["bid"], inc):
            per_round.append({
                "round": int(step), "advertiser": i, "ad_id": ad_id, "type": kind,
                "bid": float(bid), "multiplier": float(bid) / value_per_click,
                "auctions": int(auctions), "clicks": int(clicks), "value": value,
                "spend": spend, "utility": value - spend,
                "roi": value / spend if spend > 0 else np.nan,
                "roi_violated": bool(spend > 0 and value < tau * spend * (1 - 1e-6))})
    rounds = pd.DataFrame(per_round).sort_values(["round", "advertiser"]).reset_index(drop=True)
    atomic_parquet(rounds, out / "rounds.parquet")

    steps = int(rounds["round"].max())
    last = rounds["round"] > steps - max(1, steps // 10)
    advertisers = []
    for (i, ad_id), g in rounds.groupby(["advertiser", "ad_id"]):
        _, kind, tau = info[ad_id]
        tv, tp = g["value"].sum(), g["spend"].sum()
        played = g[g["auctions"] > 0]
        advertisers.append({
            "id": int(i), "ad_id": ad_id, "type": kind,
            "value": float(adv.loc[adv["ad_id"] == ad_id, "value_per_click"].iloc[0]),
            "tau": tau, "final_bid": float(g["bid"].iloc[-1]),
            "mean_shading": float(g.loc[last.loc[g.index], "multiplier"].mean()),
            "roi": float(tv / tp) if tp > 0 else None, "utility": float(tv - tp),
            "clicks": int(g["clicks"].sum()), "auctions": int(g["auctions"].sum()),
            "violation_rate": float(played["roi_violated"].mean()) if len(played) else None,
            "regret": None})
    metrics = pd.read_parquet(out / "market" / "metrics.parquet")
    summary = {"mechanism": config.market.mechanism, "advertisers_spec": config.market.bidding,
               "rounds": steps, "queries_per_round": config.market.queries_per_step,
               "surrogate_rounds_per_round": config.market.surrogate_rounds,
               "seed": config.seed, "advertisers": advertisers,
               "revenue": float(rounds["spend"].sum()), "welfare": float(rounds["value"].sum()),
               "revenue_per_query": float(metrics["revenue_per_query"].mean()),
               "units": "revenue, welfare and utility are totals over the run's LLM rounds; "
                        "regret is null: the LLM market has no counterfactual outcomes", **extra}
    atomic_json(out / "summary.json", json.loads(json.dumps(summary, default=float)))
    return summary


def format_summary(summary: dict) -> str:
    """A short text table of the summary (for the CLI)."""
    lines = [f"{summary['mechanism']} market: {summary['rounds']} LLM rounds x "
             f"{summary['queries_per_round']} queries (+{summary['surrogate_rounds_per_round']} "
             f"surrogate rounds each); revenue {summary['revenue']:.1f}, welfare "
             f"{summary['welfare']:.1f}",
             f"{'ad':>8} {'type':>17} {'tau':>5} {'shading':>8} {'roi':>7} {'utility':>9} "
             f"{'clicks':>6} {'viol.':>6}"]
    for a in summary["advertisers"]:
        roi = "n/a" if a["roi"] is None else f"{a['roi']:.3f}"
        viol = "n/a" if a["violation_rate"] is None else f"{a['violation_rate']:.2f}"
        lines.append(f"{a['ad_id']:>8} {a['type']:>17} {a['tau']:>5.2f} "
                     f"{a['mean_shading']:>8.3f} {roi:>7} {a['utility']:>9.1f} "
                     f"{a['clicks']:>6} {viol:>6}")
    return "\n".join(lines)
