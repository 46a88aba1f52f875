"""Auctions per second: the vectorized first-price mechanism against a per-auction Python loop.

Both run the same market: 10 value-maximizing bidders (target ROI 1.25, dual pacing of a bid
multiplier, updated after every round), one slot, first price per click, values uniform on [0, 1]
drawn per auction. The vectorized path runs each round's auctions as one numpy batch
(`llmauction_sim.classic.auctions.first_price`); the loop runs one auction at a time in Python.

    python benchmarks/bench_auctions.py [--json] [--auctions-per-round 100000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from llmauction_sim.classic.auctions import first_price  # noqa: E402
from llmauction_sim.classic.bidding import RoundFeedback, make_policy  # noqa: E402

N = 10


def vectorized(rounds: int, auctions: int, seed: int) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    policy = make_policy("value_maximizer", N, rng=rng, tau=1.25)
    start = time.perf_counter()
    for _ in range(rounds):
        policy.start_round()
        values = rng.uniform(0.0, 1.0, (auctions, N))
        result = first_price(policy.bids(values), rng=rng)
        value = (values * result.clicks).sum(axis=0)
        spend = result.payment.sum(axis=0)
        policy.update(RoundFeedback(value, spend, result.clicks.sum(axis=0), values.sum(axis=0)))
    return time.perf_counter() - start, policy.multiplier


def loop(rounds: int, auctions: int, seed: int) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    policy = make_policy("value_maximizer", N, rng=rng, tau=1.25)
    start = time.perf_counter()
    for _ in range(rounds):
        policy.start_round()
        mult = policy.multiplier.tolist()
        values = rng.uniform(0.0, 1.0, (auctions, N)).tolist()
        value, spend, clicks = [0.0] * N, [0.0] * N, [0.0] * N
        for row in values:
            best, winner = -1.0, -1
            for i in range(N):
                bid = mult[i] * row[i]
                if bid > best:
                    best, winner = bid, i
            value[winner] += row[winner]
            spend[winner] += best
            clicks[winner] += 1.0
        policy.update(RoundFeedback(np.array(value), np.array(spend), np.array(clicks),
                                    np.zeros(N)))
    return time.perf_counter() - start, policy.multiplier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auctions-per-round", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--loop-rounds", type=int, default=2, help="rounds of the slow loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    a = args.auctions_per_round
    vec_s, vec_m = vectorized(args.rounds, a, args.seed)
    loop_s, loop_m = loop(args.loop_rounds, a, args.seed)
    # Same dynamics: after the same rounds, both reach the same multipliers.
    check_s, check_m = vectorized(args.loop_rounds, a, args.seed)
    assert np.allclose(check_m, loop_m, rtol=1e-9), (check_m, loop_m)
    out = {"bidders": N, "slots": 1, "auctions_per_round": a,
           "vectorized_rounds": args.rounds, "loop_rounds": args.loop_rounds,
           "vectorized_auctions_per_s": round(args.rounds * a / vec_s),
           "loop_auctions_per_s": round(args.loop_rounds * a / loop_s)}
    out["ratio"] = round(out["vectorized_auctions_per_s"] / out["loop_auctions_per_s"], 1)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"vectorized: {out['vectorized_auctions_per_s']:,} auctions/s")
        print(f"loop:       {out['loop_auctions_per_s']:,} auctions/s")
        print(f"ratio:      {out['ratio']}x")


if __name__ == "__main__":
    main()
