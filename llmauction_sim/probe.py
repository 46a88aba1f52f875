"""The teacher-forced choice probe: where a policy writes a mention, which ad does it pick, and does
the pick follow the bids?

For each test auction the policy's own answer is written up to its first mention (``@``; greedy,
under the auction's first bid assignment) and then held fixed. The auction is re-asked with the same
K bid values rotated over the candidates (`permutations` cyclic shifts, so each candidate holds
each bid once when permutations = K), and at the fixed mention point every candidate's mention
``Title@[ID]`` is scored under the policy: q_i = pi(mention i | prompt, prefix), renormalised over
the candidates. Two figures with 95% intervals (cluster bootstrap over auctions):

- the mass on the top-bid candidate, against chance 1/K: a bid-blind policy sits at 1/K;
- the within-candidate slope of log q_i in b_i (a fixed effect per candidate and auction): how the
  same ad's probability moves with its own bid, free of relevance and position.

The text of one mention is scored as one continuation, so the probe costs K scoring passes per
(auction, permutation) and no sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from llmauction_sim.lm.base import LanguageModel, SamplingParams
from llmauction_sim.mechanisms.base import AuctionRequest
from llmauction_sim.mechanisms.tilted import MENTION_OPEN, mention_logprobs
from llmauction_sim.statistics import bootstrap, within_slope

_SENTENCE_END = (". ", "! ", "? ", "\n")


def rotated_bids(request: AuctionRequest, shift: int) -> AuctionRequest:
    """The auction with its bid values moved `shift` candidates along (cyclically)."""
    ids = [ad.id for ad in request.candidates]
    values = [request.bids[i] for i in ids]
    k = len(ids)
    bids = {ids[(j + shift) % k]: values[j] for j in range(k)}
    return AuctionRequest(request.query_id, request.profile, request.query, request.candidates,
                          bids)


def mention_prefixes(lm: LanguageModel, prompts: Sequence, max_new_tokens: int = 64
                     ) -> tuple[list[str], list[bool]]:
    """The policy's greedy answer up to and including its first ``@``; where it opens no mention
    within `max_new_tokens`, its first sentence followed by `` @`` (flagged as a fallback)."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens,
                            stop=(MENTION_OPEN,))
    prefixes, fallback = [], []
    for out in lm.generate(prompts, params):
        text = out[0].text
        if text.endswith(MENTION_OPEN):
            prefixes.append(text)
            fallback.append(False)
            continue
        cut = min((text.find(s) + 1 for s in _SENTENCE_END if s in text), default=len(text))
        first = text[:cut].strip()
        prefixes.append(f"{first} {MENTION_OPEN}" if first else MENTION_OPEN)
        fallback.append(True)
    return prefixes, fallback


def choice_probe(lm: LanguageModel, requests: Sequence[AuctionRequest], build_prompt,
                 permutations: int = 4, max_new_tokens: int = 64) -> pd.DataFrame:
    """One row per (auction, permutation, candidate): bid, whether it is the top bid, log q and
    q (the policy's choice probability at the fixed mention point). `build_prompt(request)` is
    the mechanism's prompt (e.g. `ad_llm_messages` with the run's prompt config)."""
    if permutations < 1:
        raise ValueError(f"permutations = {permutations} must be >= 1")
    prefixes, fallback = mention_prefixes(lm, [build_prompt(r) for r in requests],
                                          max_new_tokens)
    asked, rows_prefix, meta = [], [], []
    for a, r in enumerate(requests):
        for p in range(permutations):
            rotated = rotated_bids(r, p)
            asked.append(rotated)
            rows_prefix.append(prefixes[a])
            meta.append((a, p))
    ids = [[ad.id for ad in r.candidates] for r in asked]
    log_q = mention_logprobs(lm, [build_prompt(r) for r in asked], rows_prefix, asked, ids)
    records = []
    for (a, p), r, lq, cands in zip(meta, asked, log_q, ids):
        lq = lq - np.logaddexp.reduce(lq)
        bids = np.array([r.bids[i] for i in cands])
        for j, ad_id in enumerate(cands):
            records.append({"auction": a, "query_id": r.query_id, "permutation": p,
                            "ad_id": ad_id, "position": j, "bid": float(bids[j]),
                            "is_top": bool(bids[j] == bids.max()), "k": len(cands),
                            "log_q": float(lq[j]), "q": float(np.exp(lq[j])),
                            "prefix": prefixes[a], "fallback": fallback[a]})
    return pd.DataFrame(records)


def probe_summary(frame: pd.DataFrame, rng: np.random.Generator, column: str = "q") -> dict:
    """Top-bid mass (against 1/K) and the within-candidate slope of log(column) in the bid, each
    with a 95% cluster-bootstrap interval over auctions; also the first-position mass."""
    auctions = sorted(frame["auction"].unique())
    by_auction = [frame[frame["auction"] == a] for a in auctions]
    top = [float(g.loc[g["is_top"], column].sum() / g["permutation"].nunique())
           for g in by_auction]
    first = [float(g.loc[g["position"] == 0, column].mean()) for g in by_auction]
    chance = float(np.mean([1.0 / g["k"].iloc[0] for g in by_auction]))
    logs = [np.log(np.clip(g[column].to_numpy(), 1e-300, None)) for g in by_auction]
    groups = [g["ad_id"].to_numpy() for g in by_auction]
    bids = [g["bid"].to_numpy() for g in by_auction]

    def slope(index):
        return within_slope(np.concatenate([np.char.add(f"{n}:", groups[i].astype(str))
                                            for n, i in enumerate(index)]),
                            np.concatenate([bids[i] for i in index]),
                            np.concatenate([logs[i] for i in index]))

    top_arr, first_arr = np.array(top), np.array(first)
    return {"auctions": len(auctions), "permutations": int(frame["permutation"].nunique()),
            "chance": chance,
            "top_bid_mass": bootstrap(lambda i: top_arr[i].mean(), len(top), rng).to_dict(),
            "first_position_mass": bootstrap(lambda i: first_arr[i].mean(), len(first),
                                             rng).to_dict(),
            "log_q_slope_per_bid": bootstrap(slope, len(auctions), rng, samples=500).to_dict(),
            "fallback_share": float(frame.groupby("auction")["fallback"].first().mean())}
