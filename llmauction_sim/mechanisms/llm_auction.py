"""`llm_auction`: one pass of the trained Ad-LLM (the paper's mechanism after IRPO).

The policy is `ad_llm` with `mechanisms.llm_auction_checkpoint` (a model name or folder) and/or
`mechanisms.llm_auction_adapter` (a PEFT adapter folder) in place of `ad_llm.name` /
`ad_llm.adapter`. With neither set it is the untrained model, so it equals `pretrained` (same
prompt, same sampling, same draws). Payment: first price per click (paper Eq. 7).
"""

from __future__ import annotations

import dataclasses

from llmauction_sim.mechanisms.base import register_mechanism
from llmauction_sim.mechanisms.pretrained import SinglePassMechanism


def policy_model_config(config):
    """`config.ad_llm` with the trained policy's checkpoint/adapter, when configured."""
    m = config.mechanisms
    changes = {}
    if m.llm_auction_checkpoint:
        changes["name"] = m.llm_auction_checkpoint
    if m.llm_auction_adapter:
        changes["adapter"] = m.llm_auction_adapter
    return dataclasses.replace(config.ad_llm, **changes), bool(changes)


def _llm_auction(config, *, ad_lm=None, catalog=None, **_):
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.lm.hf import load_language_model

    model_config, trained = policy_model_config(config)
    if trained or ad_lm is None:  # a given ad_lm is the untrained Ad-LLM: never reuse it then
        ad_lm = load_language_model(model_config, seed=config.seed)
    catalog = catalog if catalog is not None else load_catalog(config.data.catalog)
    return SinglePassMechanism("llm_auction", ad_lm, config.ad_sampling, config.penalty,
                               catalog.ids)


register_mechanism("llm_auction", _llm_auction)
