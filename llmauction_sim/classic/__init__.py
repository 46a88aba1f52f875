"""Classic auctions and learning bidders, vectorized over thousands of auctions (pure numpy).

`classic.auctions`: first price, second price and GSP on ``[auctions, bidders]`` bids, their
registry (`register_classic_auction`, `make_classic_auction`) and counterfactual outcomes.
`classic.bidding`: bid-multiplier policies (truthful, fixed_shading, fixed_bid, value and utility
maximizers), their registry (`register_policy`, `make_policy`) and populations; the LLM market's
learning advertisers wrap these policies (market/learners.py). `classic.equilibrium`: the bidders'
learning dynamics on a classic auction.

Apart from the LLM market's mechanisms (`llmauction_sim.mechanisms`), which allocate ads in text.
"""

from llmauction_sim.classic.auctions import (
    CLASSIC_AUCTIONS,
    AuctionResult,
    ClassicAuction,
    classic_auction_names,
    counterfactual_outcomes,
    first_price,
    gsp,
    make_classic_auction,
    register_classic_auction,
    second_price,
)
from llmauction_sim.classic.bidding import (
    CLASSIC_POLICIES,
    BiddingPolicy,
    make_policy,
    parse_population,
    policy_names,
    register_policy,
)

__all__ = ["CLASSIC_AUCTIONS", "CLASSIC_POLICIES", "AuctionResult", "BiddingPolicy",
           "ClassicAuction", "classic_auction_names", "counterfactual_outcomes", "first_price",
           "gsp", "make_classic_auction", "make_policy", "parse_population", "policy_names",
           "register_classic_auction", "register_policy", "second_price"]
