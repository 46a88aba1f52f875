"""MOSAIC's scoring of M sampled answers per prompt: `score` twice (log p, then log q under the
sampling settings, every answer a full prompt + answer sequence) vs `score_samples` (each prompt
once, its answers on copies of its cache, log p and log q from one pass).

Both score the same answers, sampled once beforehand (not timed), on the same model in one run.
Prints answers/s of both, the ratio and the largest difference of the importance log-ratio
log p - log q between the two; --json for machines.

    python benchmarks/bench_scoring.py [--prompts 24] [--samples 5] [--max-new-tokens 96] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_generate import ad_llm_prompts  # noqa: E402

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.lm.base import SamplingParams  # noqa: E402
from llmauction_sim.lm.devices import cpu_description  # noqa: E402
from llmauction_sim.lm.registry import load_language_model  # noqa: E402
from llmauction_sim.mechanisms.base import policy_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--samples", type=int, default=5, help="answers M per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed).with_overrides(
        [f"ad_sampling.max_new_tokens={args.max_new_tokens}"])
    lm = load_language_model(policy_config(config), seed=args.seed, run_config=config)
    prompts = ad_llm_prompts(config, args.prompts, args.seed)
    proposal = SamplingParams.from_config(config.ad_sampling)
    params = [SamplingParams.from_config(config.ad_sampling, n=args.samples, seed=args.seed + i)
              for i in range(len(prompts))]
    answers = [[c.text for c in outs] for outs in lm.generate(prompts, params)]
    repeated = [p for p, a in zip(prompts, answers) for _ in a]
    flat = [x for a in answers for x in a]

    start = time.perf_counter()
    log_p = lm.score(repeated, flat)
    log_q = lm.score(repeated, flat, proposal)
    twice_s = time.perf_counter() - start
    start = time.perf_counter()
    ref, prop = lm.score_samples(prompts, answers, proposal)
    once_s = time.perf_counter() - start
    ratio_diff = np.abs((log_p - log_q) - (np.concatenate(ref) - np.concatenate(prop))).max()

    n = len(flat)
    result = {"cpu": cpu_description(), "dtype": str(lm.model.dtype).removeprefix("torch."),
              "prompts": len(prompts), "samples": args.samples, "answers": n,
              "score_twice_answers_per_s": round(n / twice_s, 2),
              "score_samples_answers_per_s": round(n / once_s, 2),
              "speedup": round(twice_s / once_s, 2),
              "max_abs_log_ratio_difference": round(float(ratio_diff), 4)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
