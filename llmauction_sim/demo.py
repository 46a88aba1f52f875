"""Outside a market: answer queries with the Ad-LLM (`llmauction answer`), and replay a market
run's auctions through another mechanism (what `llmauction demo` compares)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llmauction_sim.clicks.base import make_judge
from llmauction_sim.comparison import AuctionMetrics
from llmauction_sim.config import RunConfig
from llmauction_sim.data import load_dataset
from llmauction_sim.domain.catalog import Catalog, load_catalog
from llmauction_sim.domain.users import profiles_from_frame
from llmauction_sim.evaluation import run_auctions
from llmauction_sim.lm.base import LanguageModel
from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder
from llmauction_sim.mechanisms import Allocation, AuctionRequest, make_mechanism
from llmauction_sim.mechanisms.pctr import judge_as_pctr
from llmauction_sim.rounds import auctions_for, logged_requests, with_uniform_bids
from llmauction_sim.tables import read_query_log


def answer_queries(config: RunConfig, retriever: CandidateRetriever, catalog: Catalog,
                   profiles: pd.DataFrame, queries: pd.DataFrame, rng: np.random.Generator,
                   lm: LanguageModel | None = None) -> list[tuple[AuctionRequest, Allocation]]:
    """`queries` (rows of a data build's queries.parquet) answered in one batch by
    `market.mechanism` (on `lm` when given, else its own model), with the paper's bids (integers
    uniform in market.bid_low..bid_high, per query and ad)."""
    requests = with_uniform_bids(auctions_for(profiles, queries, retriever),
                                 config.market.bid_low, config.market.bid_high, rng)
    mechanism = make_mechanism(config.market.mechanism, config, ad_lm=lm, catalog=catalog)
    return list(zip(requests, mechanism.allocate(requests, rng)))


def replay(config: RunConfig, out: str | Path, mechanism_name: str) -> pd.DataFrame:
    """A market run's logged auctions (same users, queries, candidates and bids) answered again by
    `mechanism_name`, judged by the run's click judge: its per-query log."""
    out = Path(out)
    log = read_query_log(out / "queries.parquet")
    profiles, _ = load_dataset(config.market.data or out / "data")
    by_user = {p.user_id: p for p in profiles_from_frame(profiles)}
    catalog = load_catalog(config.data.catalog)
    requests = logged_requests(log, by_user.__getitem__, catalog)
    encoder = load_encoder(config.retrieval.encoder)
    judge = make_judge(config.clicks.judge, config, encoder=encoder, catalog=catalog)
    mechanism = make_mechanism(mechanism_name, config, catalog=catalog, encoder=encoder,
                               click_model=judge_as_pctr(config, judge))
    return run_auctions(mechanism, judge, catalog, requests, config.seed)[0]


def headline(log: pd.DataFrame) -> dict:
    """What the demo prints per mechanism: the share of answers that show the auction's top bid,
    revenue per query (realised clicks) and expected revenue per query (bid x click
    probability)."""
    m = AuctionMetrics.from_log(log)
    return {"answers": len(log), "top_bid_shown": float((m.top_exposed > 0).mean()),
            "revenue_per_query": float(m.revenue.mean()),
            "expected_revenue_per_query": float(m.expected_revenue.mean()),
            "ads_per_answer": float(m.exposures.mean())}
