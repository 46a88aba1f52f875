"""`llm_auction`: one pass of the Ad-LLM policy (the paper's mechanism after IRPO).

The policy is `ad_llm` with `mechanisms.llm_auction.checkpoint` (a model name or folder) and/or
`mechanisms.llm_auction.adapter` (a PEFT adapter folder or packaged name) in place of
`ad_llm.name` / `ad_llm.adapter`. With neither set it is pi_0 (`mechanisms.policy_adapter`: on
the embedded model, the shipped format warm start, which writes mentions but ignores the bids).
Payment: first price per click (paper Eq. 7).
"""

from __future__ import annotations

import dataclasses

from llmauction_sim.config import LlmAuctionConfig
from llmauction_sim.mechanisms.base import (
    ad_llm_and_catalog,
    policy_lm_and_catalog,
    register_mechanism,
)
from llmauction_sim.mechanisms.pretrained import SinglePassMechanism


def policy_model_config(config, settings: LlmAuctionConfig | None = None):
    """`config.ad_llm` with the trained policy's checkpoint/adapter (`settings`, default its
    table ``[mechanisms.llm_auction]``), when configured."""
    m = settings or config.mechanisms.llm_auction
    changes = {}
    if m.checkpoint:
        changes["name"] = m.checkpoint
    if m.adapter:
        changes["adapter"] = m.adapter
    return dataclasses.replace(config.ad_llm, **changes), bool(changes)


def _llm_auction(config, *, settings: LlmAuctionConfig, ad_lm=None, catalog=None, **_):
    model_config, trained = policy_model_config(config, settings)
    if trained:  # a given ad_lm is the configured Ad-LLM: a trained policy never reuses it
        ad_lm, catalog = ad_llm_and_catalog(config, None, catalog, model_config)
    else:
        ad_lm, catalog = policy_lm_and_catalog(config, ad_lm, catalog)
    return SinglePassMechanism("llm_auction", ad_lm, config.ad_sampling, config.penalty,
                               catalog.ids, config.ad_prompt)


register_mechanism("llm_auction", _llm_auction,
                   "one pass of the IRPO-trained Ad-LLM policy (the paper's mechanism)",
                   config_class=LlmAuctionConfig)


def _ranked(config, *, ad_lm=None, catalog=None, **_):
    """`llm_auction_ranked`, an ablation: pi_0 (`mechanisms.policy_adapter`) in one pass with the
    candidates listed by bid, highest first. The system, not the model, ranks the bids; what this
    shows is the model's position bias."""
    ad_lm, catalog = policy_lm_and_catalog(config, ad_lm, catalog)
    return SinglePassMechanism("llm_auction_ranked", ad_lm, config.ad_sampling, config.penalty,
                               catalog.ids, config.ad_prompt, rank_by_bid=True)


register_mechanism("llm_auction_ranked", _ranked,
                   "ablation: pi_0 in one pass with the candidates listed by bid")
