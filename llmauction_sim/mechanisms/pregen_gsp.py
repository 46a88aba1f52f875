"""`pregen_gsp`: the classic pre-generation slot auction, then the Ad-LLM writes the winners in.

1. Score every candidate by bid x pCTR (pCTR: the click model's probability of the ad inside a
   templated sentence, `pctr.template_pctr`).
2. The top `mechanisms.pregen_gsp.slots` ads win slots 1..k in score order.
3. The Ad-LLM gets a prompt (`prompts.ad_llm_slot_messages`) listing exactly the winners (in the
   compact style: the usual Ad-LLM prompt with the winners as its ad list) and writes them in.
4. A click on a valid mention of a winner costs its slot price: GSP (next score / own pCTR),
   VCG (externality per expected click, with `mechanisms.pregen_gsp.slot_weights`) or first
   price (own bid).
   A mention of a candidate that did not win is a format error (NON_CANDIDATE) and never charged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmauction_sim.config import PregenGspConfig
from llmauction_sim.domain.mentions import format_penalty, validate_response
from llmauction_sim.domain.payments import (
    gsp_prices,
    per_click,
    rank_by_score,
    slot_weight,
    vcg_slot_prices,
)
from llmauction_sim.lm.base import LanguageModel, SamplingParams
from llmauction_sim.lm.prompts import ad_llm_slot_messages
from llmauction_sim.mechanisms.base import (
    Allocation,
    AuctionRequest,
    Mechanism,
    policy_lm_and_catalog,
    register_mechanism,
)
from llmauction_sim.mechanisms.pctr import load_click_model, template_pctr


@dataclass(frozen=True)
class SlotAllocation(Allocation):
    """An allocation of the slot auction: winners in slot order, their prices per click, pCTRs."""

    winners: tuple[str, ...] = ()
    prices: Mapping[str, float] = field(default_factory=dict)
    pctr: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SlotOutcome:
    winners: tuple[str, ...]
    prices: dict[str, float]
    expected_clicks: dict[str, float]  # slot weight x pCTR of each winner


def slot_auction(bids: Mapping[str, float], pctr: Mapping[str, float], slots: int,
                 slot_weights: Sequence[float], rule: str) -> SlotOutcome:
    """Rank by bid x pCTR, keep the top `slots`, price them by `rule` (gsp, vcg, first_price)."""
    winners = tuple(rank_by_score(bids, pctr)[:slots])
    if rule == "gsp":
        prices = gsp_prices(bids, pctr, slots)
    elif rule == "vcg":
        prices = vcg_slot_prices(bids, pctr, slot_weights, slots)
    elif rule == "first_price":
        prices = {i: float(bids[i]) for i in winners}
    else:
        raise ValueError(f"unknown slot payment rule {rule!r}; use gsp, vcg or first_price")
    expected = {i: slot_weight(slot_weights, j) * float(pctr[i]) for j, i in enumerate(winners)}
    return SlotOutcome(winners, prices, expected)


class PregenGSPMechanism(Mechanism):
    name = "pregen_gsp"
    generations_per_query = 1

    def __init__(self, lm: LanguageModel, click_model, sampling, penalty, catalog_ids,
                 slots: int = 2, slot_weights: Sequence[float] = (1.0, 0.7),
                 payment: str = "gsp", prompt=None):
        self.lm = lm
        self.click_model = click_model
        # Which click model the pCTR comes from, for the run summary.
        self.pctr_model = getattr(click_model, "name", type(click_model).__name__)
        self.sampling = sampling
        self.penalty = penalty
        self.catalog_ids = frozenset(catalog_ids)
        self.slots = slots
        self.slot_weights = tuple(slot_weights)
        self.payment = payment
        self.prompt = prompt

    def auction(self, requests: Sequence[AuctionRequest]) -> list[tuple[SlotOutcome, dict]]:
        pctrs = template_pctr(self.click_model, requests)
        return [(slot_auction(r.bids, p, self.slots, self.slot_weights, self.payment), p)
                for r, p in zip(requests, pctrs)]

    def allocate(self, requests: Sequence[AuctionRequest], rng: np.random.Generator
                 ) -> list[Allocation]:
        if not requests:
            return []
        outcomes = self.auction(requests)
        prompts = []
        for r, (outcome, _) in zip(requests, outcomes):
            by_id = {ad.id: ad for ad in r.candidates}
            prompts.append(ad_llm_slot_messages(r.profile, r.query,
                                                [by_id[i] for i in outcome.winners], r.bids,
                                                self.prompt))
        params = [SamplingParams.from_config(self.sampling, seed=int(s))
                  for s in rng.integers(0, 2**63, len(requests))]
        outputs = self.lm.generate(prompts, params)
        allocations: list[Allocation] = []
        for r, (outcome, pctr), out in zip(requests, outcomes, outputs):
            text = out[0].text
            titles = {ad.id: ad.title for ad in r.candidates if ad.id in outcome.winners}
            report = validate_response(text, titles, self.catalog_ids)
            allocations.append(SlotAllocation(text, report, format_penalty(report, self.penalty),
                                              outcome.winners, outcome.prices, pctr))
        return allocations

    def payments(self, request: AuctionRequest, allocation: Allocation,
                 clicked: Sequence[str]) -> dict[str, float]:
        prices = getattr(allocation, "prices", None)
        if prices is None:
            raise TypeError("pregen_gsp charges only its own SlotAllocation")
        exposed = set(allocation.exposed_ids)
        return per_click(prices, [c for c in clicked if c in exposed and c in prices])


def _pregen_gsp(config, *, settings: PregenGspConfig, ad_lm=None, catalog=None, click_model=None,
                encoder=None, user_lm=None, **_):
    ad_lm, catalog = policy_lm_and_catalog(config, ad_lm, catalog)
    click_model = load_click_model(config, click_model=click_model, encoder=encoder,
                                   catalog=catalog, user_lm=user_lm)
    return PregenGSPMechanism(ad_lm, click_model, config.ad_sampling, config.penalty, catalog.ids,
                              settings.slots, settings.slot_weights, settings.payment,
                              config.ad_prompt)


register_mechanism("pregen_gsp", _pregen_gsp,
                   "pre-generation slot auction (GSP), then the Ad-LLM writes the winners in",
                   config_class=PregenGspConfig)
