"""Seconds per DPO step on the embedded model: the settings IRPO uses on a CPU against TRL's defaults.

One DPO phase (LoRA on all linear layers, r=16, batch 4, the same steps) on the same preference
pairs: real Ad-LLM auctions (profile, candidate ads with bids, query), a chosen answer that mentions
an ad and a rejected one with broken markup. Configurations, each timed in this run end to end
(trainer setup and reference log-probs included) and in the training loop alone (TRL's
`train_runtime`, reference log-probs included), one change at a time:

- `trl_defaults`: float32 weights under bf16 autocast, gradient checkpointing, reference
  log-probs computed at every step, the paper's prompt (rules + candidates as JSON);
- `no_checkpointing`: ... without gradient checkpointing;
- `precomputed_reference`: ... reference log-probs once, before the first step;
- `model_dtype`: ... the model in its `dtype=auto` weights (bf16 where native) with float32
  adapters and no autocast;
- `ours`: ... and the compact prompt (ad_prompt.style = compact): IRPO's settings.

On a CPU without native bf16 (AVX512-BF16 or AMX) bf16 runs emulated at ~1% of float32 speed:
there the baseline keeps TRL's other defaults in float32 (pass --bf16 to time bf16 anyway).

    python benchmarks/bench_dpo.py [--pairs 4] [--steps 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_generate import ad_llm_requests  # noqa: E402

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.learning.dpo import run_dpo_phase  # noqa: E402
from llmauction_sim.learning.pairs import ResponseGroup, build_preference_pairs  # noqa: E402
from llmauction_sim.lm.devices import cpu_supports_bf16  # noqa: E402
from llmauction_sim.lm.hf import load_trainable  # noqa: E402
from llmauction_sim.lm.prompts import ad_llm_messages  # noqa: E402

# name: (model dtype, bf16 autocast, gradient checkpointing, precompute reference, prompt style)
CONFIGS = {
    "trl_defaults": ("float32", True, True, False, "paper"),
    "no_checkpointing": ("float32", True, False, False, "paper"),
    "precomputed_reference": ("float32", True, False, True, "paper"),
    "model_dtype": ("auto", False, False, True, "paper"),
    "ours": ("auto", False, False, True, "compact"),
}


def pairs(config: RunConfig, count: int, seed: int):
    groups = []
    for i, r in enumerate(ad_llm_requests(config, count, seed)):
        ad = r.candidates[0]
        chat = ad_llm_messages(r.profile, r.query, r.candidates, r.bids, config.ad_prompt)
        chosen = (f"Here is a plan that fits your week. For the gear, @{ad.title}@[{ad.id}] "
                  "has what you need, and you can start small and build up over a month.")
        rejected = chosen.replace(f"@[{ad.id}]", f"@[{ad.id}")
        groups.append(ResponseGroup(chat, [chosen, rejected], [50.0, -20.0], f"q{i}"))
    return build_preference_pairs(groups)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true",
                        help="time the bf16 rows even without native bf16 (very slow)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    native = cpu_supports_bf16() or torch.cuda.is_available()
    base = RunConfig(seed=args.seed)
    result = {"model": base.ad_llm.name, "threads": torch.get_num_threads(), "pairs": args.pairs,
              "steps": args.steps, "batch_size": 4, "native_bf16": native,
              "lora_r": base.dpo.lora_r, "lora_targets": len(base.dpo.lora_target_modules)}
    for name, (dtype, autocast, checkpointing, precompute, style) in CONFIGS.items():
        config = base.with_overrides([f"ad_llm.dtype={dtype}", f"ad_prompt.style={style}"])
        data = pairs(config, args.pairs, args.seed)
        model, tokenizer = load_trainable(config.ad_llm)
        dpo = config.dpo.replace(max_steps=args.steps, batch_size=4,
                                 bf16=autocast and (native or args.bf16),
                                 gradient_checkpointing=checkpointing,
                                 precompute_ref_log_probs=precompute, max_length=640)
        start = time.perf_counter()
        history = run_dpo_phase(model, tokenizer, data, dpo).log_history
        result[f"{name}_s_per_step"] = round((time.perf_counter() - start) / args.steps, 2)
        # The training loop alone (reference log-probs included), without trainer setup.
        runtime = next(h["train_runtime"] for h in history if "train_runtime" in h)
        result[f"{name}_train_s_per_step"] = round(runtime / args.steps, 2)
        print(f"{name}: {result[f'{name}_s_per_step']} s per step end to end, "
              f"{result[f'{name}_train_s_per_step']} in the training loop", file=sys.stderr,
              flush=True)
    result["ratio"] = round(result["trl_defaults_s_per_step"] / result["ours_s_per_step"], 2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
