"""`pretrained`: one pass of the (untrained) Ad-LLM with all candidates and bids in its prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmauction_sim.domain.mentions import format_penalty, validate_response
from llmauction_sim.lm.base import LanguageModel, SamplingParams
from llmauction_sim.lm.prompts import ad_llm_messages
from llmauction_sim.mechanisms.base import (
    Allocation,
    AuctionRequest,
    FirstPricePerClick,
    ad_llm_and_catalog,
    register_mechanism,
)


class SinglePassMechanism(FirstPricePerClick):
    """The LLM is the allocation rule: it writes one answer and decides which ads to mention."""

    def __init__(self, name: str, lm: LanguageModel, sampling, penalty, catalog_ids,
                 prompt=None, rank_by_bid: bool = False):
        self.name = name
        self.lm = lm
        self.prompt = prompt
        self.rank_by_bid = rank_by_bid
        self.sampling = sampling
        self.penalty = penalty
        self.catalog_ids = frozenset(catalog_ids)

    def allocate(self, requests: Sequence[AuctionRequest], rng: np.random.Generator
                 ) -> list[Allocation]:
        if not requests:
            return []
        prompts = [ad_llm_messages(r.profile, r.query, self._listed(r), r.bids, self.prompt)
                   for r in requests]
        params = [SamplingParams.from_config(self.sampling, seed=int(s))
                  for s in rng.integers(0, 2**63, len(requests))]
        outputs = self.lm.generate(prompts, params)
        allocations = []
        for request, out in zip(requests, outputs):
            text = out[0].text
            report = validate_response(text, request.candidate_titles(), self.catalog_ids)
            allocations.append(Allocation(text, report, format_penalty(report, self.penalty)))
        return allocations

    def _listed(self, request: AuctionRequest):
        """The candidates in prompt order: as retrieved, or by bid, highest first."""
        if not self.rank_by_bid:
            return request.candidates
        return sorted(request.candidates, key=lambda ad: -float(request.bids[ad.id]))


def _pretrained(config, *, ad_lm=None, catalog=None, **_):
    ad_lm, catalog = ad_llm_and_catalog(config, ad_lm, catalog)
    return SinglePassMechanism("pretrained", ad_lm, config.ad_sampling, config.penalty,
                               catalog.ids, config.ad_prompt)


register_mechanism("pretrained", _pretrained,
                   "one pass of the untrained Ad-LLM with every candidate and bid in its prompt")
