"""`llm_auction`: one pass of the trained Ad-LLM (the paper's mechanism after IRPO).

The policy is `ad_llm` with `mechanisms.llm_auction_checkpoint` (a model name or folder) and/or
`mechanisms.llm_auction_adapter` (a PEFT adapter folder) in place of `ad_llm.name` /
`ad_llm.adapter`. With neither set it is the untrained model, so it equals `pretrained` (same
prompt, same sampling, same draws). Payment: first price per click (paper Eq. 7).
"""

from __future__ import annotations

import dataclasses

from llmauction_sim.mechanisms.base import ad_llm_and_catalog, register_mechanism
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
    model_config, trained = policy_model_config(config)
    # A given ad_lm is the untrained Ad-LLM: a trained policy never reuses it.
    ad_lm, catalog = ad_llm_and_catalog(config, None if trained else ad_lm, catalog,
                                        model_config)
    return SinglePassMechanism("llm_auction", ad_lm, config.ad_sampling, config.penalty,
                               catalog.ids)


register_mechanism("llm_auction", _llm_auction)
