"""Answer queries with the Ad-LLM: retrieve candidates, draw bids, generate, parse the mentions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmauction_sim.config import RunConfig
from llmauction_sim.domain.catalog import Catalog
from llmauction_sim.domain.mentions import MentionReport, format_penalty, validate_response
from llmauction_sim.domain.users import UserProfile, profiles_from_frame
from llmauction_sim.lm.base import LanguageModel, SamplingParams
from llmauction_sim.lm.encoder import CandidateRetriever
from llmauction_sim.lm.prompts import ad_llm_messages

BID_LOW, BID_HIGH = 1, 100  # the paper's per-query i.i.d. integer bids


@dataclass(frozen=True)
class Answer:
    query_id: str
    profile: UserProfile
    query: str
    bids: dict[str, int]
    response: str
    report: MentionReport
    penalty: float


def answer_queries(config: RunConfig, lm: LanguageModel, retriever: CandidateRetriever,
                   catalog: Catalog, profiles: pd.DataFrame, queries: pd.DataFrame,
                   rng: np.random.Generator) -> list[Answer]:
    """One batched Ad-LLM call for all `queries` (rows of a data build's queries.parquet)."""
    by_user = {p.user_id: p for p in profiles_from_frame(profiles)}
    users = [by_user[u] for u in queries["user_id"]]
    texts = list(queries["query"])
    candidates = retriever.retrieve(users, texts)
    bids = [{ad.id: int(b) for ad, b in zip(c, rng.integers(BID_LOW, BID_HIGH + 1, len(c)))}
            for c in candidates]
    prompts = [ad_llm_messages(u, q, c, b) for u, q, c, b in zip(users, texts, candidates, bids)]
    params = [SamplingParams.from_config(config.ad_sampling, seed=int(rng.integers(2**63)))
              for _ in prompts]
    outputs = lm.generate(prompts, params)
    answers = []
    for qid, user, text, cands, bid, out in zip(queries["query_id"], users, texts, candidates,
                                                bids, outputs):
        response = out[0].text
        report = validate_response(response, {ad.id: ad.title for ad in cands}, catalog.ids)
        answers.append(Answer(qid, user, text, bid, response, report,
                              format_penalty(report, config.penalty)))
    return answers
