"""`llmauction evaluate` and `llmauction bid-sweep`: mechanisms on the same test auctions.

Every mechanism sees the same test queries, candidates, bids and click judge for a given seed: each
of those comes from its own seeded stream, independent of the mechanism, so runs are comparable.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from llmauction_sim.analysis import curve, monotonicity_stats, sweep
from llmauction_sim.clicks.base import make_judge
from llmauction_sim.comparison import write_comparison
from llmauction_sim.config import RunConfig
from llmauction_sim.data import build_just_enough, load_dataset
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder
from llmauction_sim.manifest import write_json
from llmauction_sim.mechanisms import make_mechanism
from llmauction_sim.mechanisms.pctr import judge_as_pctr, load_click_model
from llmauction_sim.rounds import (
    EVALUATE_COLUMNS,
    auctions_for,
    play_round,
    query_row,
    summarize,
    with_uniform_bids,
)
from llmauction_sim.runfolder import atomic_parquet, open_run_folder, temp_path
from llmauction_sim.tables import read_query_log, write_query_log

# Independent seed streams (mixed with config.seed).
_PICK, _BIDS, _ALLOCATE, _CLICKS, _FOCAL = 11, 12, 13, 14, 15


def _test_data(config: RunConfig, data: str | Path | None, out: Path, needed: int):
    """(profiles, test queries): from `data` (a `data build` folder), else a build inside
    `out/data` that is just big enough, written by the configured query writer (the User-LLM
    unless data.query_writer=template is asked for)."""
    if data is None:
        frac = max(config.data.test_fraction, 1e-9)
        test_profiles = needed / config.data.queries_per_profile
        # The split rounds profiles x test_fraction: enough profiles that it rounds to at least
        # the whole test profiles needed (one test query needs one test profile, not 0.2 of one).
        enough = (math.ceil(test_profiles) - 0.5 + 1e-9) / frac
        data = build_just_enough(config, out / "data", max(test_profiles / frac, enough), spare=1)
    profiles, queries = load_dataset(data)
    test = queries[queries["split"] == "test"]
    if test.empty:
        raise ValueError(f"{data} has no test queries; build more profiles")
    return profiles, test


def test_auctions(config: RunConfig, test_queries: int, out: Path, data=None, *,
                  retriever=None, catalog=None):
    """The evaluation's auctions: `test_queries` test queries chosen by seed, their retrieved
    candidates, and bids uniform over market.bid_low..bid_high (integers) per query and ad."""
    if test_queries < 1:
        raise ValueError(f"--test-queries = {test_queries} must be >= 1")
    profiles, test = _test_data(config, data, out, test_queries)
    pick = np.random.default_rng([config.seed, _PICK])
    rows = np.sort(pick.choice(len(test), size=min(test_queries, len(test)), replace=False))
    test = test.iloc[rows]
    catalog = catalog if catalog is not None else load_catalog(config.data.catalog)
    if retriever is None:
        retriever = CandidateRetriever(catalog, load_encoder(config.retrieval.encoder),
                                       config.retrieval.num_candidates,
                                       config.retrieval.profile_weight)
    requests = with_uniform_bids(auctions_for(profiles, test, retriever), config.market.bid_low,
                                 config.market.bid_high, np.random.default_rng([config.seed, _BIDS]))
    return requests, catalog, retriever


def _resources(config: RunConfig, catalog, retriever, ad_lm=None, judge=None):
    encoder = retriever.encoder
    if judge is None:
        judge = make_judge(config.clicks.judge, config, encoder=encoder, catalog=catalog)
    click_model = judge_as_pctr(config, judge)
    return {"ad_lm": ad_lm, "catalog": catalog, "encoder": encoder,
            "click_model": click_model}, judge


def run_auctions(mechanism, judge, catalog, requests, seed: int) -> tuple[pd.DataFrame, float]:
    """Allocate every auction in one batched call, judge the clicks, charge (rounds.py): the
    per-query log (one row per auction) and the allocation's seconds. Draws come from seed
    streams of their own, so mechanisms run on the same auctions see the same generators."""
    played = play_round(mechanism, judge, catalog, requests,
                        np.random.default_rng([seed, _ALLOCATE]),
                        np.random.default_rng([seed, _CLICKS]))
    # What a click on each shown ad would cost (its bid under first price, the slot price under
    # GSP or VCG): the expected revenue weighs these by the click probabilities.
    records = [query_row(o, EVALUATE_COLUMNS, click_prices={
        i: float(mechanism.payments(o.request, o.allocation, (i,)).get(i, 0.0))
        for i in o.allocation.exposed_ids}) for o in played.outcomes]
    return pd.DataFrame(records), played.seconds["allocate"]


def evaluate(config: RunConfig, mechanism_name: str, test_queries: int, out: str | Path,
             data=None, *, ad_lm=None, judge=None, mechanism=None, retriever=None) -> dict:
    """Allocate, judge clicks and charge on the test auctions; write OUT/summary.json and
    OUT/queries.parquet; return the summary."""
    out = Path(out)
    with open_run_folder(out, "evaluate", inputs={"data": data}) as folder:
        return _evaluate(folder, config, mechanism_name, test_queries, out, data, ad_lm=ad_lm,
                         judge=judge, mechanism=mechanism, retriever=retriever)


def _evaluate(folder, config, mechanism_name, test_queries, out, data, *, ad_lm, judge,
              mechanism, retriever) -> dict:
    requests, catalog, retriever = test_auctions(config, test_queries, out, data,
                                                 retriever=retriever)
    folder.input("data", data if data is not None else out / "data")
    folder.started(config)
    resources, judge = _resources(config, catalog, retriever, ad_lm, judge)
    if mechanism is None:
        mechanism = make_mechanism(mechanism_name, config, **resources)
    queries, seconds = run_auctions(mechanism, judge, catalog, requests, config.seed)
    write_query_log(queries, out / "queries.parquet")
    generations = mechanism.generations_per_query
    summary = {"mechanism": mechanism_name, "seed": config.seed, "judge": config.clicks.judge,
               **({"pctr_model": mechanism.pctr_model} if mechanism.pctr_model is not None
                  else {}),
               **summarize(queries), "generations_per_query": generations,
               "seconds_per_query": seconds / len(requests)}
    write_json(out / "summary.json", summary)
    write_json(out / "config.json", config.to_dict())
    folder.finished()
    return summary


def evaluate_many(config: RunConfig, names: list[str], test_queries: int, out: str | Path,
                  data=None, *, judge=None, retriever=None, progress=None) -> pd.DataFrame:
    """`evaluate` each mechanism on the same test auctions (OUT/<name>/), then the paired
    comparison (comparison.py) in OUT/comparison.{md,csv,json} and OUT/paired.csv; returns the
    per-mechanism table."""
    if len(set(names)) != len(names):
        raise ValueError(f"--mechanism lists a mechanism twice: {names}")
    out = Path(out)
    with open_run_folder(out, "evaluate", inputs={"data": data}) as folder:
        table = _evaluate_many(config, names, test_queries, out, data, judge, retriever,
                               progress, folder)
        folder.finished()
    return table


def _evaluate_many(config, names, test_queries, out, data, judge, retriever, progress, folder):
    requests, catalog, retriever = test_auctions(config, test_queries, out, data,
                                                 retriever=retriever)
    folder.input("data", data if data is not None else out / "data")
    folder.started(config)
    _, judge = _resources(config, catalog, retriever, None, judge)
    logs, generations = {}, {}
    for name in names:
        cfg = config.with_overrides([f"market.mechanism={name}"])
        summary = _finished_evaluation(cfg, out / name, name, len(requests))
        if summary is None:
            if progress:
                progress(f"evaluating {name} on {len(requests)} test auctions")
            summary = evaluate(cfg, name, test_queries, out / name, data, judge=judge,
                               retriever=retriever)
        elif progress:
            progress(f"{name}: reusing {out / name} (same settings, {len(requests)} auctions)")
        logs[name] = read_query_log(out / name / "queries.parquet")
        generations[name] = float(summary["generations_per_query"])
    table, _ = write_comparison(out, logs, generations, config.seed)
    return table


def _finished_evaluation(config: RunConfig, folder: Path, name: str,
                         auctions: int) -> dict | None:
    """The summary of an `evaluate` of mechanism `name` already run in `folder` with the same
    settings on as many auctions (a rerun comparison only evaluates what is missing), else None.
    `market.mechanism` is not compared: the evaluated mechanism is `name`, recorded in the
    summary, whatever the market's default was."""
    def settings(cfg: dict) -> dict:
        return {**cfg, "market": {**cfg.get("market", {}), "mechanism": None}}

    try:
        summary = json.loads((folder / "summary.json").read_text())
        saved = RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
        same = settings(saved.to_dict()) == settings(config.to_dict())  # fields that moved, moved
        rows = len(read_query_log(folder / "queries.parquet"))
    except (OSError, ValueError):
        return None
    return summary if same and summary.get("mechanism") == name and rows == auctions else None


def bid_sweep(config: RunConfig, mechanism_name: str, mode: str, out: str | Path, *,
              test_queries: int = 4, repeats: int = 1, bids=None, data=None, ad_lm=None,
              judge=None, mechanism=None, retriever=None) -> dict:
    """The paper's monotonicity (one ad per sample, bids 1, 10, ..., 100) or continuity (one
    query and ad, every bid 1..100) experiment; writes OUT/curve.parquet, OUT/samples.parquet,
    OUT/curve.png and OUT/summary.json."""
    if mode not in ("monotonicity", "continuity"):
        raise ValueError(f"--mode {mode!r}: use monotonicity or continuity")
    if repeats < 1:
        raise ValueError(f"--repeats = {repeats} must be >= 1")
    if test_queries < 1:
        raise ValueError(f"--test-queries = {test_queries} must be >= 1")
    if bids is not None:
        bad = [b for b in bids if not (math.isfinite(float(b)) and float(b) >= 0)]
        if bad or not len(bids):
            raise ValueError(f"--bids {','.join(map(str, bids))}: give finite bids >= 0, e.g. "
                             "--bids 1,10,50,100")
    out = Path(out)
    with open_run_folder(out, "bid-sweep", inputs={"data": data}) as folder:
        summary = _bid_sweep(folder, config, mechanism_name, mode, out, test_queries, repeats,
                             bids, data, ad_lm, judge, mechanism, retriever)
        folder.finished()
    return summary


def _bid_sweep(folder, config, mechanism_name, mode, out, test_queries, repeats, bids, data,
               ad_lm, judge, mechanism, retriever) -> dict:
    n = test_queries if mode == "monotonicity" else 1
    requests, catalog, retriever = test_auctions(config, n, out, data, retriever=retriever)
    folder.input("data", data if data is not None else out / "data")
    folder.started(config)
    if bids is None:
        bids = [1, *range(10, 101, 10)] if mode == "monotonicity" else list(range(1, 101))
    resources, judge = _resources(config, catalog, retriever, ad_lm, judge)
    click_model = resources["click_model"]
    if click_model is None:
        click_model = load_click_model(config, encoder=retriever.encoder, catalog=catalog)
    if mechanism is None:
        mechanism = make_mechanism(mechanism_name, config, **{**resources,
                                                               "click_model": click_model})
    focal_rng = np.random.default_rng([config.seed, _FOCAL])
    focal = [r.candidates[int(focal_rng.integers(len(r.candidates)))].id for r in requests]
    start = time.perf_counter()
    samples = sweep(mechanism, click_model, requests, focal, bids, repeats,
                    np.random.default_rng([config.seed, _ALLOCATE]))
    seconds = time.perf_counter() - start
    curves = curve(samples)
    atomic_parquet(samples, out / "samples.parquet")
    atomic_parquet(curves, out / "curve.parquet")
    summary = {"mechanism": mechanism_name, "mode": mode, "seed": config.seed,
               "bids": [float(b) for b in bids], "repeats": repeats,
               "answers": len(samples), "seconds": seconds,
               "clicks": monotonicity_stats(curves, "clicks"),
               "itctr": monotonicity_stats(curves, "itctr")}
    write_json(out / "summary.json", summary)
    plot_curves(curves, out / "curve.png", f"{mechanism_name}: {mode}")
    return summary


def plot_curves(curves: pd.DataFrame, path: Path, title: str) -> None:
    from matplotlib.figure import Figure  # not pyplot: a notebook keeps its inline backend

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for s, c in curves.groupby("sample"):
        c = c.sort_values("bid")
        ax1.plot(c["bid"], c["clicks"] / c["answers"], marker="o", ms=3, label=f"sample {s}")
        ax2.plot(c["bid"], c["itctr"], marker="o", ms=3)
        ax2.fill_between(c["bid"], c["itctr_low"], c["itctr_high"], alpha=0.15)
    ax1.set_title("clicks per answer")
    ax2.set_title("ITCTR estimate (pCTR x exposure, 95% CI)")
    for ax in (ax1, ax2):
        ax.set_xlabel("bid of the focal ad")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    tmp = temp_path(path, ".png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
