"""Answer queries with the Ad-LLM outside a market: retrieve, draw bids, run `pretrained` once."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmauction_sim.config import RunConfig
from llmauction_sim.domain.catalog import Catalog
from llmauction_sim.domain.users import profiles_from_frame
from llmauction_sim.lm.base import LanguageModel
from llmauction_sim.lm.encoder import CandidateRetriever
from llmauction_sim.mechanisms import Allocation, AuctionRequest, make_mechanism


def answer_queries(config: RunConfig, lm: LanguageModel, retriever: CandidateRetriever,
                   catalog: Catalog, profiles: pd.DataFrame, queries: pd.DataFrame,
                   rng: np.random.Generator) -> list[tuple[AuctionRequest, Allocation]]:
    """One batched Ad-LLM call for all `queries` (rows of a data build's queries.parquet), with
    the paper's bids (integers uniform in market.bid_low..bid_high, per query and ad)."""
    by_user = {p.user_id: p for p in profiles_from_frame(profiles)}
    users = [by_user[u] for u in queries["user_id"]]
    texts = list(queries["query"])
    low, high = config.market.bid_low, config.market.bid_high
    requests = [
        AuctionRequest(qid, user, text, tuple(cands),
                       {ad.id: float(b) for ad, b in zip(cands, rng.integers(low, high + 1,
                                                                             len(cands)))})
        for qid, user, text, cands in zip(queries["query_id"], users, texts,
                                          retriever.retrieve(users, texts))]
    mechanism = make_mechanism("pretrained", config, ad_lm=lm, catalog=catalog)
    return list(zip(requests, mechanism.allocate(requests, rng)))
