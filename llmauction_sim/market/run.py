"""`simulate`: run an AdMarket for N rounds into a run folder, checkpointing every round.

Run folder layout::

    config.json        resolved config          manifest.json   versions, seed, git commit, timings
    queries.parquet    one row per query        metrics.parquet one row per round (model reporters)
    advertisers.parquet one row per advertiser and round (agent reporters)
    summary.json       whole-run metrics        metrics.png     the reporters over rounds
    .state/            per-round parts and the market state (what --resume continues from),
                       with the sentence vectors each round computed (a resume reuses them)
    run.json, .lock    what the folder is and its inputs' hashes; the writer's lock (runfolder.py)

config.json is written once the data is loaded and the market is built, so a start that fails
before that leaves nothing that blocks the retry.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tqdm.auto import tqdm

from llmauction_sim.config import RunConfig
from llmauction_sim.data import build_just_enough, load_dataset
from llmauction_sim.lm.encoder import MemoLog
from llmauction_sim.manifest import environment, write_json
from llmauction_sim.market.model import AdMarket
from llmauction_sim.rounds import summarize
from llmauction_sim.runfolder import RunFolder, RunFolderError, atomic_parquet, open_run_folder
from llmauction_sim.runfolder import temp_path as _temp_path
from llmauction_sim.tables import read_query_log, write_query_log

# Why a market shows no ad (the CLI's demo and the browser page say it).
NO_AD_NOTE = ("the Ad-LLM inserted no valid ad, so nothing was clicked or paid: the untrained "
              "embedded model (mechanism `pretrained`) rarely writes the @Title@[ID] markup, and "
              "the tilted decoder (the default) shows no ad when every candidate's bid x pCTR is "
              "below an ad's format cost; see docs/mechanisms.md")
PLOTTED = ("revenue_per_query", "reward_per_query", "ctr", "ads_per_response",
           "format_error_rate", "no_ad_rate")


_atomic_parquet = atomic_parquet


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_same_config(stored: RunConfig, requested: RunConfig, out: Path) -> None:
    a, b = _flatten(stored.to_dict()), _flatten(requested.to_dict())
    diff = sorted(k for k in a if a[k] != b.get(k) and k != "market.steps")
    if diff:
        shown = ", ".join(f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in diff[:5])
        raise RunFolderError(f"{out} was started with another config ({shown}); resume with the "
                             "same settings (only --steps may change) or use a new --out")


def _data_for(config: RunConfig, out: Path, progress: bool, resume: bool):
    if config.market.data:
        return load_dataset(config.market.data)
    if resume and (out / "data" / "queries.parquet").is_file():  # built when this run started
        return load_dataset(out / "data")
    # Just enough users for the run: every asked query is then a fresh one.
    market, data = config.market, config.data
    share = {"train": 1 - data.test_fraction, "test": data.test_fraction, "all": 1.0}[market.split]
    return load_dataset(build_just_enough(
        config, out / "data",
        market.steps * market.queries_per_step / data.queries_per_profile / max(share, 1e-9),
        progress=progress))


def _select_split(profiles: pd.DataFrame, queries: pd.DataFrame, split: str, where: Path | str):
    if split == "all":
        return profiles, queries
    chosen = queries[queries["split"] == split]
    if chosen.empty:
        raise RunFolderError(f"the data in {where} has no '{split}' queries; set market.split "
                             "to 'all' or build more profiles")
    return profiles[profiles["user_id"].isin(set(chosen["user_id"]))], chosen


def simulate(config: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
             **resources) -> dict:
    """Run `config.market.steps` rounds into `out`; return the summary. See the module doc."""
    out = Path(out)
    data = config.market.data
    with open_run_folder(out, "simulate", inputs={"data": data}, resume=resume) as folder:
        return _simulate(folder, config, out, resume, progress, resources)


def _simulate(folder: RunFolder, config: RunConfig, out: Path, resume: bool, progress: bool,
              resources: dict) -> dict:
    state_dir = out / ".state"
    state_file = state_dir / "market.json"
    done = 0
    if resume:
        if not (out / "config.json").is_file():
            raise RunFolderError(f"{out} has no run to resume (no config.json); start it "
                                 "without --resume")
        _check_same_config(RunConfig.from_dict(json.loads((out / "config.json").read_text())),
                           config, out)
        if state_file.is_file():
            done = int(json.loads(state_file.read_text())["market"]["steps"])
        if done > config.market.steps:
            raise RunFolderError(
                f"{out} has {done} finished rounds; resuming with {config.market.steps} would "
                f"drop rounds {config.market.steps + 1}-{done}: resume with --steps {done} or "
                "more")
    elif (out / "config.json").is_file():
        raise RunFolderError(f"{out} already holds a run; pass --resume to continue it or "
                             "choose another --out")
    started = time.time()

    profiles, queries = _data_for(config, out, progress, resume)
    folder.input("data", config.market.data or out / "data")
    profiles, queries = _select_split(profiles, queries, config.market.split,
                                      config.market.data or out / "data")
    market = AdMarket(config, profiles, queries, **resources)
    state_dir.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())  # the run has started
    folder.started(config)
    memo = MemoLog(market.retriever, market.judge, market.auctioneer.mechanism)
    if resume and state_file.is_file():
        state = json.loads(state_file.read_text())
        market.load_state(state["market"])
        done = market.steps
        market.history = [read_query_log(state_dir / f"step-{t:06d}.queries.parquet")
                          for t in range(1, done + 1)]
        for t in range(1, done + 1):
            memo.load(state_dir / f"step-{t:06d}.encoder.npz")
    for part in state_dir.glob("step-*"):  # from a round that never committed its state
        if int(part.name.split("-")[1].split(".")[0]) > done:
            part.unlink()

    bar = tqdm(total=config.market.steps, initial=min(done, config.market.steps),
               desc="simulating", unit="round", disable=not progress)
    while market.steps < config.market.steps:
        market.step()
        t = market.steps
        write_query_log(pd.DataFrame(market.round_records),
                        state_dir / f"step-{t:06d}.queries.parquet")
        metrics = market.datacollector.get_model_vars_dataframe().iloc[[-1]].assign(step=t)
        _atomic_parquet(metrics, state_dir / f"step-{t:06d}.metrics.parquet")
        adv = market.datacollector.get_agenttype_vars_dataframe(type(next(
            iter(market.advertisers.values())))).xs(t, level="Step").reset_index(drop=True)
        _atomic_parquet(adv.assign(step=t), state_dir / f"step-{t:06d}.advertisers.parquet")
        memo.save(state_dir / f"step-{t:06d}.encoder.npz")
        write_json(state_file, {"market": market.state()})  # commits round t
        bar.update(1)
        bar.set_postfix(revenue_per_query=f"{metrics['revenue_per_query'].iloc[0]:.1f}")
    bar.close()
    summary = finalize(out, config, market.timings, time.time() - started)
    folder.finished()
    return summary


def _gather(state_dir: Path, kind: str, steps: int) -> pd.DataFrame:
    read = read_query_log if kind == "queries" else pd.read_parquet
    parts = [read(state_dir / f"step-{t:06d}.{kind}.parquet") for t in range(1, steps + 1)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def finalize(out: Path, config: RunConfig, timings: dict, seconds: float) -> dict:
    """Assemble the per-round parts into the run's tables, summary, plot and manifest."""
    state_dir = out / ".state"
    steps = config.market.steps
    queries = _gather(state_dir, "queries", steps)
    metrics = _gather(state_dir, "metrics", steps)
    metrics = metrics[["step", *[c for c in metrics.columns if c != "step"]]]
    advertisers = _gather(state_dir, "advertisers", steps)
    write_query_log(queries, out / "queries.parquet")
    _atomic_parquet(metrics, out / "metrics.parquet")
    _atomic_parquet(advertisers, out / "advertisers.parquet")
    summary = {"steps": steps, "seed": config.seed, "mechanism": config.market.mechanism,
               "judge": config.clicks.judge, **summarize(queries)}
    write_json(out / "summary.json", summary)
    plot_metrics(metrics, out / "metrics.png")
    previous = {}
    if (out / "manifest.json").is_file():
        previous = json.loads((out / "manifest.json").read_text())
    write_json(out / "manifest.json", {
        "seed": config.seed, **environment(),
        "sessions": previous.get("sessions", 0) + 1,
        "seconds": previous.get("seconds", 0.0) + seconds,
        "timings": {k: round(v, 3) for k, v in timings.items()}})
    return summary


def metrics_figure(metrics: pd.DataFrame):
    """The reporters over rounds (a matplotlib Figure of its own: no pyplot state, so a notebook
    keeps its inline backend)."""
    fig = Figure(figsize=(12, 6), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True)
    for ax, name in zip(axes.flat, PLOTTED):
        ax.plot(metrics["step"], metrics[name], marker="o", ms=3)
        ax.set_title(name.replace("_", " "))
        ax.grid(alpha=0.3)
        if name == "ctr" and metrics[name].isna().all():
            ax.text(0.5, 0.5, "no ads exposed:\nCTR is undefined", ha="center",
                    va="center", transform=ax.transAxes, color="gray")
    for ax in axes[-1]:
        ax.set_xlabel("round")
    axes[-1, 0].set_xlim(metrics["step"].min() - 0.5, metrics["step"].max() + 0.5)  # shared
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    return fig


def plot_metrics(metrics: pd.DataFrame, path: Path) -> None:
    tmp = _temp_path(path, ".png")
    metrics_figure(metrics).savefig(tmp, dpi=100)
    os.replace(tmp, path)


def sample_answers(out: str | Path, count: int = 2) -> pd.DataFrame:
    """A few answers of a run, preferring ones with inserted ads (for printing)."""
    queries = read_query_log(Path(out) / "queries.parquet")
    order = np.argsort(-queries["exposed"].map(len).to_numpy(), kind="stable")
    return queries.iloc[order[:count]]
