"""Seconds per SFT step on the embedded model: TRL's fused LM head scoring only the labelled positions
on a CPU (`learning.dpo.compact_fused_head`, what the warm start and DPO use) against TRL's CPU
default, which scores every position.

The same warm-start examples (Ad-LLM prompts of real auctions, short answers with one mention), the
same LoRA settings and steps, both timed in this run; the losses must be equal.

    python benchmarks/bench_sft.py [--examples 32] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_generate import ad_llm_requests  # noqa: E402

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.learning.warmstart import build_examples, run_sft  # noqa: E402
from llmauction_sim.lm.hf import load_trainable  # noqa: E402

ANSWER = ("To get started, set a small weekly goal and build up slowly. Track what works for you "
          "and adjust after a month.")


@contextlib.contextmanager
def trl_cpu_default():
    """Without the patch `run_sft` applies: TRL scores every position off Triton devices."""
    from llmauction_sim.learning import dpo

    original = dpo.compact_fused_head
    dpo.compact_fused_head = contextlib.nullcontext
    try:
        yield
    finally:
        dpo.compact_fused_head = original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    config = RunConfig(seed=args.seed).with_overrides(
        [f"warmstart.batch_size={args.batch_size}", "warmstart.epochs=1"])
    requests = ad_llm_requests(config, args.examples, args.seed)
    examples = build_examples(requests, [ANSWER] * len(requests), 1,
                              np.random.default_rng(args.seed), config.ad_prompt)
    steps = -(-len(examples) // args.batch_size)
    result = {"model": config.ad_llm.name, "threads": torch.get_num_threads(),
              "examples": len(examples), "batch_size": args.batch_size, "steps": steps}
    for name, context in (("trl_cpu_default", trl_cpu_default), ("compact", contextlib.nullcontext)):
        model, tokenizer = load_trainable(config.ad_llm)
        result["dtype"] = str(model.dtype).replace("torch.", "")
        with context():
            metrics = run_sft(model, tokenizer, examples, config.warmstart, config.dpo).metrics
        result[f"{name}_s_per_step"] = round(metrics["train_runtime_s"] / steps, 2)
        result[f"{name}_loss"] = [round(metrics["loss_first"], 5), round(metrics["loss_last"], 5)]
        print(f"{name}: {result[f'{name}_s_per_step']} s per step", file=sys.stderr, flush=True)
    result["ratio"] = round(result["trl_cpu_default_s_per_step"] / result["compact_s_per_step"],
                            2)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
