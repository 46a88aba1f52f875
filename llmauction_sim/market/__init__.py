"""The stepped market: Mesa agents, the AdMarket model and the `simulate` run loop."""

from llmauction_sim.market.agents import (
                                          AdvertiserAgent,
                                          AuctioneerAgent,
                                          BidPolicy,
                                          UserAgent,
                                          make_bid_policy,
                                          register_bid_policy,
)
from llmauction_sim.market.model import AdMarket
from llmauction_sim.market.run import RunFolderError, simulate

__all__ = ["AdMarket", "AdvertiserAgent", "AuctioneerAgent", "BidPolicy", "RunFolderError",
           "UserAgent", "make_bid_policy", "register_bid_policy", "simulate"]
