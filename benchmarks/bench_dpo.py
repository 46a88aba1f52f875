"""Seconds per DPO step on the embedded model: the settings IRPO uses on a CPU against TRL's defaults.

One DPO phase (LoRA r=8, batch 4, the same steps) on the same preference pairs, built from real
Ad-LLM prompts (profile, candidate ads with bids, query) with a chosen answer that mentions an ad
and a rejected one with broken markup. Configurations, each timed end to end (reference log-probs
included):

- `trl_defaults`: bf16 autocast, gradient checkpointing, reference log-probs computed every step;
- one change at a time towards ours; `ours`: fp32, no checkpointing, reference log-probs once.

On a CPU without native bf16 (AVX512-BF16 or AMX) bf16 autocast runs emulated at ~1% of fp32
speed, so there the bf16 rows are skipped (pass --bf16 to time them anyway) and `trl_defaults`
keeps TRL's other defaults in fp32: the baseline this machine can actually run.

    python benchmarks/bench_dpo.py [--pairs 4] [--steps 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_generate import ad_llm_prompts  # noqa: E402

from llmauction_sim.config import DpoConfig, RunConfig  # noqa: E402
from llmauction_sim.learning.dpo import run_dpo_phase  # noqa: E402
from llmauction_sim.learning.pairs import ResponseGroup, build_preference_pairs  # noqa: E402
from llmauction_sim.lm.hf import cpu_supports_bf16, load_trainable  # noqa: E402

CONFIGS = {  # name: (bf16, gradient_checkpointing, precompute_ref_log_probs)
    "trl_defaults": (True, True, False),
    "no_checkpointing": (True, False, False),
    "fp32": (False, False, False),
    "ours": (False, False, True),
}
FP32_CONFIGS = {  # without native bf16: TRL's defaults other than the dtype
    "trl_defaults": (False, True, False),
    "no_checkpointing": (False, False, False),
    "ours": (False, False, True),
}


def pairs(config: RunConfig, count: int, seed: int):
    groups = []
    for i, chat in enumerate(ad_llm_prompts(config, count, seed)):
        ad = json.loads(chat[-1]["content"].split("Candidate ads: ")[1].splitlines()[0])[0]
        chosen = (f"Here is a plan that fits your week. For the gear, @{ad['title']}@[{ad['id']}] "
                  "has what you need, and you can start small and build up over a month.")
        rejected = (f"Here is a plan that fits your week. For the gear, @{ad['title']}@[{ad['id']}"
                    " has what you need, and you can start small and build up over a month.")
        groups.append(ResponseGroup(chat, [chosen, rejected], [50.0, -20.0], f"q{i}"))
    return build_preference_pairs(groups)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true",
                        help="time the bf16 rows even without native bf16 (very slow)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    native = cpu_supports_bf16() or torch.cuda.is_available()
    configs = CONFIGS if native or args.bf16 else FP32_CONFIGS

    config = RunConfig(seed=args.seed)
    data = pairs(config, args.pairs, args.seed)
    result = {"model": config.ad_llm.name, "threads": torch.get_num_threads(),
              "pairs": len(data), "steps": args.steps, "batch_size": 4,
              "native_bf16": native, "baseline_dtype": "bfloat16" if configs is CONFIGS
              else "float32"}
    for name, (bf16, checkpointing, precompute) in configs.items():
        model, tokenizer = load_trainable(config.ad_llm)
        dpo = DpoConfig(max_steps=args.steps, batch_size=4, bf16=bf16,
                        gradient_checkpointing=checkpointing, precompute_ref_log_probs=precompute,
                        max_length=640, logging_steps=1)
        start = time.perf_counter()
        run_dpo_phase(model, tokenizer, data, dpo)
        result[f"{name}_s_per_step"] = round((time.perf_counter() - start) / args.steps, 2)
    result["ratio"] = round(result["trl_defaults_s_per_step"] / result["ours_s_per_step"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
