"""Seconds per market round end to end: AdMarket's batched step against the same round one query at
a time.

Both run `AdMarket.step` on the embedded model (retrieval, bids, the Ad-LLM, the click judge,
payments, the DataCollector) with the same config. The baseline passes the market a mechanism and
a judge that handle one query per call, the way a per-request serving loop would; everything else
is the same code.

    python benchmarks/bench_market.py [--queries-per-step 8] [--steps 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from llmauction_sim.clicks.base import make_judge  # noqa: E402
from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.data import build_dataset, load_dataset  # noqa: E402
from llmauction_sim.domain.catalog import load_catalog  # noqa: E402
from llmauction_sim.lm.encoder import load_encoder  # noqa: E402
from llmauction_sim.lm.registry import load_language_model  # noqa: E402
from llmauction_sim.market.model import AdMarket  # noqa: E402
from llmauction_sim.mechanisms import make_mechanism  # noqa: E402


class OneAtATime:
    """A mechanism or judge called once per query instead of once per round."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def allocate(self, requests, rng):
        return [self.inner.allocate([r], rng)[0] for r in requests]

    def judge(self, requests, rng):
        return [self.inner.judge([r], rng)[0] for r in requests]


def timed_steps(market: AdMarket, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        market.step()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries-per-step", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed).with_overrides(
        [f"market.queries_per_step={args.queries_per_step}", "market.mechanism=pretrained",
         "data.query_writer=template",
         "data.profiles=20"])
    with tempfile.TemporaryDirectory() as tmp:
        build_dataset(config, Path(tmp), progress=False)
        profiles, queries = load_dataset(Path(tmp))
    catalog = load_catalog(config.data.catalog)
    encoder = load_encoder(config.retrieval.encoder)
    lm = load_language_model(config.ad_llm, seed=config.seed)
    mechanism = make_mechanism(config.market.mechanism, config, ad_lm=lm, catalog=catalog)
    judge = make_judge(config.clicks.judge, config, encoder=encoder, catalog=catalog)

    def market(per_query: bool) -> AdMarket:
        return AdMarket(config, profiles, queries, catalog=catalog, encoder=encoder,
                        mechanism=OneAtATime(mechanism) if per_query else mechanism,
                        judge=OneAtATime(judge) if per_query else judge)

    market(False).step()  # warm-up: allocator, kernels, encoder caches
    result = {"model": config.ad_llm.name, "threads": torch.get_num_threads(),
              "mechanism": config.market.mechanism, "judge": config.clicks.judge,
              "queries_per_step": args.queries_per_step, "steps": args.steps,
              "batched_s_per_step": round(timed_steps(market(False), args.steps), 2),
              "per_query_s_per_step": round(timed_steps(market(True), args.steps), 2)}
    result["ratio"] = round(result["per_query_s_per_step"] / result["batched_s_per_step"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
