"""Example plugin: one mechanism, one bid policy and one click judge, found through entry points.

None of them needs a language model, so a market or an evaluation with them runs in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmauction_sim import (
    Allocation,
    BidPolicy,
    ClickDecision,
    ClickJudge,
    Mechanism,
    format_penalty,
    render_mention,
    validate_response,
)


@dataclass(frozen=True)
class TopBidConfig:
    """Settings of the top-bid mechanism."""

    template: str = field(default="For {query!r}, try {mention}.",
                          metadata={"help": "answer text; {query} and {mention} are filled in"})


class TopBidMechanism(Mechanism):
    """Mentions the highest-bidding candidate in a fixed sentence; no language model."""

    name = "top_bid"
    description = "mentions the top-bid candidate in a fixed sentence (no language model)"
    config_class = TopBidConfig

    def __init__(self, config, *, settings: TopBidConfig, catalog=None, **resources):
        self.penalty = config.penalty
        self.settings = settings  # the run config's [mechanisms.top_bid] table

    def allocate(self, requests, rng):
        out = []
        for request in requests:
            top = max(request.candidates, key=lambda ad: (request.bids[ad.id], ad.id))
            text = self.settings.template.format(query=request.query,
                                                 mention=render_mention(top.title, top.id))
            report = validate_response(text, request.candidate_titles())
            out.append(Allocation(text, report, format_penalty(report, self.penalty)))
        return out


class ConstantBid(BidPolicy):
    """Bids a fixed share of the advertiser's value per click."""

    name = "constant_bid"

    def __init__(self, share: float):
        self.share = share

    def bid(self, advertiser, request_context, rng):
        return self.share * advertiser.value_per_click


def constant_bid(market, value, rng):
    """bids half the advertiser's value per click in every auction"""
    return ConstantBid(0.5)


class AlwaysFirstJudge(ClickJudge):
    """Clicks the first exposed ad of every answer."""

    name = "always_first"
    description = "clicks the first exposed ad of every answer"

    def __init__(self, config, **resources):
        pass

    def judge(self, requests, rng):
        return [ClickDecision(tuple(ad.id for ad in r.exposed[:1]),
                              {ad.id: float(i == 0) for i, ad in enumerate(r.exposed)})
                for r in requests]
