"""One market, two learners: advertisers learn to bid while IRPO retrains the Ad-LLM.

The schedule (``market.rounds_per_epoch = K``): the current policy serves K LLM rounds of the
market (bidders learn from them, and from `market.surrogate_rounds` surrogate rounds fitted to the
current policy's rounds); then one IRPO epoch trains the policy on exactly those rounds - their
auctions with the advertisers' bids are the training auctions, their answers and judged clicks
are the epoch's click log - and the new policy serves the next K rounds. Rounds after the last
full block are served without a further epoch, so ``(market.steps - 1) // K`` epochs run.

Folder (OUT)::

    data/      the users and queries both learners draw from (unless market.data is given)
    market/    the market run (`simulate` layout), resumed block by block
    irpo/      the IRPO run (`run_irpo` layout); epoch-t/market.parquet holds the rounds it
               trained on
    rounds.parquet, summary.json   as `llmauction equilibrium`, plus per-block figures

Both halves checkpoint (the market every round, IRPO every phase), so a killed run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from llmauction_sim.clicks.base import make_judge
from llmauction_sim.config import ConfigError, RunConfig
from llmauction_sim.learning.irpo import (
    EPOCHS,
    MARKET_LOG,
    PHASES,
    STATE,
    advance,
    ensure_data,
    open_irpo,
)
from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder
from llmauction_sim.market.run import simulate
from llmauction_sim.runfolder import atomic_parquet
from llmauction_sim.tables import read_query_log, write_query_log

SINGLE_PASS = ("pretrained", "llm_auction")


def check_joint(config: RunConfig) -> None:
    market, trained = config.market, config.mechanisms.llm_auction
    if market.mechanism not in SINGLE_PASS:
        raise ConfigError(f"market.rounds_per_epoch retrains the Ad-LLM, so the mechanism must be "
                          f"the trained policy itself ({' or '.join(SINGLE_PASS)}), not "
                          f"{market.mechanism!r}; set --mechanism llm_auction")
    if trained.checkpoint or trained.adapter:
        raise ConfigError("market.rounds_per_epoch trains from ad_llm.name / ad_llm.adapter; "
                          "set those instead of mechanisms.llm_auction.checkpoint / .adapter")


def joint_data(config: RunConfig, out: Path) -> Path:
    """market.data when set, else a build in OUT/data with a fresh training query for every
    market round's query and enough test queries for IRPO's evaluations."""
    market = config.market
    train = max(config.irpo.train_queries, market.steps * market.queries_per_step)
    return ensure_data(config.with_overrides([f"irpo.train_queries={train}"]), out, market.data)


def _market_steps(folder: Path) -> int:
    state = folder / ".state" / "market.json"
    return int(json.loads(state.read_text())["market"]["steps"]) if state.is_file() else 0


def _block_log(market_dir: Path, first: int, last: int) -> pd.DataFrame:
    return pd.concat([read_query_log(market_dir / ".state" / f"step-{t:06d}.queries.parquet")
                      for t in range(first, last + 1)], ignore_index=True)


def run_joint(config: RunConfig, out: str | Path, sub, types: list[str], *,
              resume: bool = False, progress: bool = True, judge=None, retriever=None,
              **irpo_resources) -> dict:
    """Run the joint schedule (module doc) with the advertisers of catalog `sub`, the i-th of type
    `types[i]`; write OUT/blocks.parquet and return the summary's joint entries (rounds per
    epoch, IRPO epochs, blocks). The caller writes the summary (market/equilibrium.py).

    `judge` and `retriever` are shared by both halves (default: built from `config`);
    `irpo_resources` go to `open_irpo` (model, tokenizer, make_lm, pctr_encoder)."""
    check_joint(config)
    out = Path(out)
    if not resume and (out / "market" / "config.json").is_file():
        raise FileExistsError(f"{out} already holds a joint run; pass --resume to continue it "
                              "or choose another --out")
    k, steps = config.market.rounds_per_epoch, config.market.steps
    epochs = (steps - 1) // k
    data = joint_data(config, out)
    config = config.with_overrides([f"market.data={data}"])
    retriever = retriever or CandidateRetriever(
        sub, load_encoder(config.retrieval.encoder), config.retrieval.num_candidates,
        config.retrieval.profile_weight)
    judge = judge or make_judge(config.clicks.judge, config, encoder=retriever.encoder,
                                catalog=sub)
    irpo_dir = out / "irpo"
    run = open_irpo(config, irpo_dir, resume=(irpo_dir / STATE).is_file(), progress=progress,
                    data=data, catalog=sub, retriever=retriever, judge=judge, **irpo_resources)
    try:
        return _run_blocks(run, config, out, sub, types, k, steps, epochs, retriever, judge,
                           progress)
    finally:
        run.close()


def _run_blocks(run, config: RunConfig, out: Path, sub, types: list[str], k: int, steps: int,
                epochs: int, retriever, judge, progress: bool) -> dict:
    irpo_dir, market_dir = out / "irpo", out / "market"
    advance(run, 0)
    for block in range(epochs + 1):
        if block and run.done < (block, PHASES.index("evaluate")):
            log_path = irpo_dir / f"epoch-{block}" / MARKET_LOG
            if not log_path.is_file():
                log_path.parent.mkdir(parents=True, exist_ok=True)
                write_query_log(_block_log(market_dir, (block - 1) * k + 1, block * k),
                                log_path)
            run.say(f"epoch {block}: training on market rounds {(block - 1) * k + 1}-{block * k}")
            advance(run, block)
        target = min((block + 1) * k, steps)
        if _market_steps(market_dir) < target:
            simulate(config.with_overrides([f"market.steps={target}"]), market_dir,
                     resume=(market_dir / "config.json").is_file(), progress=progress,
                     catalog=sub, retriever=retriever, judge=judge, ad_lm=run.lm)
    held_out = pd.read_parquet(irpo_dir / EPOCHS)
    blocks = block_table(out, k, held_out, dict(zip(sub.ids, types)))
    atomic_parquet(blocks, out / "blocks.parquet")
    return {"rounds_per_epoch": k, "irpo_epochs": epochs,
            "blocks": blocks.astype(object).where(blocks.notna(), None).to_dict("records")}


def block_table(out: Path, k: int, held_out: pd.DataFrame, types: dict) -> pd.DataFrame:
    """One row per block of K rounds served by one policy: the market's figures in those rounds,
    the mean bid multiplier (bid / value) per advertiser type, and the policy's held-out IRPO
    evaluation."""
    metrics = pd.read_parquet(out / "market" / "metrics.parquet")
    adv = pd.read_parquet(out / "market" / "advertisers.parquet")
    adv["multiplier"] = adv["bid"] / adv["value_per_click"]
    adv["type"] = adv["ad_id"].map(types)
    evals = held_out.set_index("epoch")
    rows = []
    for block, g in metrics.groupby((metrics["step"] - 1) // k):
        block = int(block)
        bids = adv[adv["step"].isin(g["step"])]
        row = {"policy_epoch": block, "first_round": int(g["step"].min()),
               "last_round": int(g["step"].max()),
               "revenue_per_query": float(g["revenue_per_query"].mean()),
               "ads_per_response": float(g["ads_per_response"].mean()),
               "format_error_rate": float(g["format_error_rate"].mean())}
        for kind, m in bids.groupby("type")["multiplier"]:
            row[f"multiplier_{kind}"] = float(m.mean())
        for key in ("revenue_per_query", "reward_per_query", "format_error_rate"):
            value = evals[key].get(block, np.nan) if key in evals else np.nan
            row[f"held_out_{key}"] = float(value) if value is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
