"""llmauction_sim: an agent-based simulator of LLM-native advertising auctions on Mesa.

The extension API (docs/extending.md) is importable from here: subclass `Mechanism`, `BidPolicy`
or `ClickJudge` and register it with `register_mechanism`, `register_bid_policy` or
`register_judge`, or declare it under the entry-point groups ``llmauction_sim.mechanisms``,
``llmauction_sim.bid_policies`` and ``llmauction_sim.judges`` of an installed package.

Names are imported on first access, so ``import llmauction_sim`` stays cheap (no Mesa, no torch).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmauction-sim")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# public name -> module that defines it
_EXPORTS = {
    "Registry": "llmauction_sim.registry",
    "Entry": "llmauction_sim.registry",
    "PluginError": "llmauction_sim.registry",
    "RunConfig": "llmauction_sim.config",
    "ConfigError": "llmauction_sim.config",
    **dict.fromkeys(
        ["Mechanism", "FirstPricePerClick", "Allocation", "AuctionRequest", "MECHANISMS",
         "register_mechanism", "make_mechanism", "mechanism_names", "mechanism_descriptions"],
        "llmauction_sim.mechanisms.base"),
    **dict.fromkeys(["render_mention", "validate_response", "format_penalty", "MentionReport"],
                    "llmauction_sim.domain.mentions"),
    **dict.fromkeys(
        ["ClickJudge", "ClickModel", "ClickRequest", "ClickDecision", "JUDGES", "register_judge",
         "make_judge", "judge_names", "judge_descriptions"],
        "llmauction_sim.clicks.base"),
    **dict.fromkeys(
        ["BidPolicy", "AuctionOutcome", "BID_POLICIES", "register_bid_policy", "make_bid_policy",
         "bid_policy_names", "bid_policy_descriptions"],
        "llmauction_sim.market.agents"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llmauction_sim' has no attribute {name!r}")
    # Importing a subpackage registers its built-in entries (its __init__ runs first).
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
