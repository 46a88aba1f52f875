"""Ad-LLM generation speed: a naive loop of `model.generate` per prompt vs the batched LM layer.

Both answer the same Ad-LLM prompts (profile, candidate ads with bids, query) with the same sampling
settings on the same model, in one run. Prints tokens/s of both and the ratio; --json for machines.

    python benchmarks/bench_generate.py [--prompts 64] [--max-new-tokens 64] [--json]
    python benchmarks/bench_generate.py --skip-naive --compare-cpu-kernels  # kernels on vs off
    python benchmarks/bench_generate.py --skip-naive --compare-dtypes  # float32 vs bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.domain.catalog import load_catalog  # noqa: E402
from llmauction_sim.domain.users import generate_profiles  # noqa: E402
from llmauction_sim.lm.base import SamplingParams  # noqa: E402
from llmauction_sim.lm.devices import cpu_description, resolve_dtype  # noqa: E402
from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder  # noqa: E402
from llmauction_sim.lm.prompts import ad_llm_messages  # noqa: E402
from llmauction_sim.lm.query_writer import TemplateQueryWriter, topics_for  # noqa: E402
from llmauction_sim.lm.registry import load_language_model  # noqa: E402


def ad_llm_prompts(config: RunConfig, count: int, seed: int):
    return [ad_llm_messages(r.profile, r.query, r.candidates, r.bids, config.ad_prompt)
            for r in ad_llm_requests(config, count, seed)]


def ad_llm_requests(config: RunConfig, count: int, seed: int):
    """`count` auctions: generated profiles, template queries, retrieved candidates, integer
    bids uniform in 1..100."""
    from llmauction_sim.mechanisms import AuctionRequest

    catalog = load_catalog()
    profiles = generate_profiles(count, seed, catalog)
    writer = TemplateQueryWriter(seed)
    requests = [(i, p, topics_for(p, 1)[0], 0) for i, p in enumerate(profiles)]
    queries = [texts[0] for texts in writer.candidates(requests, attempt=0)]
    retriever = CandidateRetriever(catalog, load_encoder(config.retrieval.encoder),
                                   config.retrieval.num_candidates,
                                   config.retrieval.profile_weight)
    rng = np.random.default_rng(seed)
    return [AuctionRequest(f"q{i}", p, q, tuple(cands),
                           {ad.id: float(b) for ad, b in zip(cands, rng.integers(1, 101,
                                                                                len(cands)))})
            for i, (p, q, cands) in enumerate(zip(profiles, queries,
                                                  retriever.retrieve(profiles, queries)))]


def naive_loop(lm, prompts, params: SamplingParams) -> tuple[int, float]:
    """One `model.generate` call per prompt: the baseline most code starts from."""
    tokens, start = 0, time.perf_counter()
    for i, chat in enumerate(prompts):
        ids = lm.tokenizer.apply_chat_template(chat, add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        torch.manual_seed(params.seed + i)
        with torch.inference_mode():
            out = lm.model.generate(**ids, do_sample=params.temperature > 0,
                                    temperature=params.temperature, top_p=params.top_p,
                                    top_k=params.top_k, max_new_tokens=params.max_new_tokens,
                                    pad_token_id=lm.pad_id)
        tokens += out.shape[1] - ids["input_ids"].shape[1]
    return tokens, time.perf_counter() - start


def batched(lm, prompts, params: SamplingParams) -> tuple[int, float]:
    start = time.perf_counter()
    outputs = lm.generate(prompts, params)
    return sum(c.num_tokens for out in outputs for c in out), time.perf_counter() - start


def compare_dtypes(lm, other, prompts, params: SamplingParams, repeats: int) -> dict:
    """float32 (`lm`) against bfloat16 (`other`) on the same prompts, alternating which goes first
    in each of `repeats` rounds so that a drifting machine load falls on both; wall time and this
    process's CPU time (which other processes' load barely moves) are both reported."""
    totals = {name: [0, 0.0, 0.0] for name in ("float32", "bf16")}
    ratios = []
    for r in range(repeats):
        order = [("float32", lm), ("bf16", other)]
        rate = {}
        for name, model in order if r % 2 == 0 else order[::-1]:
            cpu = time.process_time()
            tokens, seconds = batched(model, prompts, params)
            totals[name][0] += tokens
            totals[name][1] += seconds
            totals[name][2] += time.process_time() - cpu
            rate[name] = tokens / seconds
        ratios.append(rate["bf16"] / rate["float32"])
    (f_tok, f_s, f_cpu), (h_tok, h_s, h_cpu) = totals["float32"], totals["bf16"]
    return {"repeats": repeats, "batched_tokens": f_tok, "batched_seconds": round(f_s, 2),
            "batched_tok_s": round(f_tok / f_s, 1), "bf16_tokens": h_tok,
            "bf16_seconds": round(h_s, 2), "bf16_tok_s": round(h_tok / h_s, 1),
            "bf16_over_float32": round(h_tok / h_s * f_s / f_tok, 2),
            "bf16_over_float32_per_round": [round(x, 2) for x in ratios],
            "bf16_over_float32_cpu_time": round(h_tok / h_cpu * f_cpu / f_tok, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int,
                        help="default: the Ad-LLM's configured ad_sampling.max_new_tokens")
    parser.add_argument("--naive-prompts", type=int,
                        help="time the naive loop on the first N prompts only (it is slow); "
                        "default: all")
    parser.add_argument("--batch-size", type=int, help="override ad_llm.max_batch_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true", help="time the batched path only")
    parser.add_argument("--compare-cpu-kernels", action="store_true",
                        help="also time the batched path with ad_llm.cpu_kernels off, in this run")
    parser.add_argument("--compare-dtypes", action="store_true",
                        help="time the batched path in float32 and in bfloat16 in this run "
                        "(overrides ad_llm.dtype; the naive loop uses float32)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--compare-dtypes: rounds of float32 and bfloat16, alternating")
    parser.add_argument("--dtype", help="override ad_llm.dtype (float32, bfloat16, float16)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed)
    if args.batch_size:
        config = config.with_overrides([f"ad_llm.max_batch_size={args.batch_size}"])
    if args.compare_dtypes:
        args.dtype = "float32"
    if args.dtype:
        config = config.with_overrides([f"ad_llm.dtype={args.dtype}"])
    lm = load_language_model(config.ad_llm, seed=args.seed)
    prompts = ad_llm_prompts(config, args.prompts, args.seed)
    max_new = args.max_new_tokens or config.ad_sampling.max_new_tokens
    params = SamplingParams.from_config(config.ad_sampling, max_new_tokens=max_new, seed=args.seed)
    prompt_tokens = [len(lm.encode_chat(p)) for p in prompts]
    lm.generate(prompts[:2], params)  # warm-up: allocator, kernels

    result = {"model": config.ad_llm.name, "dtype": str(lm.model.dtype).replace("torch.", ""),
              "auto_dtype": str(resolve_dtype("auto", torch.device("cpu"))).replace("torch.", ""),
              "cpu": cpu_description(), "threads": torch.get_num_threads(),
              "prompts": len(prompts),
              "mean_prompt_tokens": float(np.mean(prompt_tokens)),
              "max_new_tokens": max_new, "batch_size": lm.max_batch_size,
              "cpu_kernels": lm.cpu_kernels}
    if args.compare_dtypes:
        other = load_language_model(dataclasses.replace(config.ad_llm, dtype="bfloat16"),
                                    seed=args.seed)
        other.generate(prompts[:2], params)
        result.update(compare_dtypes(lm, other, prompts, params, args.repeats))
        b_tokens, b_seconds = result["batched_tokens"], result["batched_seconds"]
    else:
        b_tokens, b_seconds = batched(lm, prompts, params)
        result.update(batched_tokens=b_tokens, batched_seconds=round(b_seconds, 2),
                      batched_tok_s=round(b_tokens / b_seconds, 1))
    if args.compare_cpu_kernels and lm.cpu_kernels:
        lm.cpu_kernels = False
        p_tokens, p_seconds = batched(lm, prompts, params)
        lm.cpu_kernels = True
        result.update(no_kernels_tokens=p_tokens, no_kernels_seconds=round(p_seconds, 2),
                      no_kernels_tok_s=round(p_tokens / p_seconds, 1),
                      cpu_kernels_ratio=round(p_seconds / b_seconds * b_tokens / p_tokens, 2))
    if not args.skip_naive:
        naive_prompts = prompts[:args.naive_prompts] if args.naive_prompts else prompts
        n_tokens, n_seconds = naive_loop(lm, naive_prompts, params)
        result.update(naive_prompts=len(naive_prompts), naive_tokens=n_tokens,
                      naive_seconds=round(n_seconds, 2), naive_tok_s=round(n_tokens / n_seconds, 1))
        result["ratio"] = round(result["batched_tok_s"] / result["naive_tok_s"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
