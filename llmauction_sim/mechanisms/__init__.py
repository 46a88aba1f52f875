"""Auction mechanisms, registered by name."""

from llmauction_sim.mechanisms import pretrained  # noqa: F401  (registers "pretrained")
from llmauction_sim.mechanisms.base import (
                                            Allocation,
                                            AuctionRequest,
                                            Mechanism,
                                            check_mechanism,
                                            make_mechanism,
                                            mechanism_names,
                                            register_mechanism,
)

__all__ = ["AuctionRequest", "Allocation", "Mechanism", "check_mechanism", "make_mechanism",
           "mechanism_names", "register_mechanism"]
