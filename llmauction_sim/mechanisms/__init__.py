"""Auction mechanisms, registered by name: pretrained, pregen_gsp, mosaic, llm_auction,
llm_auction_tilted, llm_auction_ranked (and any installed under the entry-point group
``llmauction_sim.mechanisms``)."""

from llmauction_sim.mechanisms import (  # noqa: F401  (importing registers each mechanism)
    llm_auction,
    mosaic,
    pregen_gsp,
    pretrained,
    tilted,
)
from llmauction_sim.mechanisms.base import (
    Allocation,
    AuctionRequest,
    FirstPricePerClick,
    Mechanism,
    check_mechanism,
    make_mechanism,
    mechanism_descriptions,
    mechanism_names,
    register_mechanism,
)

__all__ = ["AuctionRequest", "Allocation", "FirstPricePerClick", "Mechanism", "check_mechanism",
           "make_mechanism", "mechanism_descriptions", "mechanism_names", "register_mechanism"]
