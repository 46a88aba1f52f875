#!/usr/bin/env bash
# On a GPU machine (no network needed): (1) the same Ad-LLM prompts generated with the transformers
# backend and with vLLM, tokens/s of both; (2) the smoke run of the paper's GPU path
# (`--config paper_gpu_smoke`: data build of 32 queries, one IRPO epoch with vLLM sampling and full
# fine-tuning DPO, evaluation). Figures go to docs/results/gpu_check.json (docs/performance.md).
#
#   bash experiments/gpu_check.sh                 # a random model of Qwen3-4B's shape (see below)
#   bash experiments/gpu_check.sh /path/to/Qwen3-4B-Instruct-2507   # a local checkpoint
#
# Without a checkpoint the model is Qwen3-4B's architecture (36 layers, hidden 2560, 32 heads,
# 8 KV heads, MLP 9728) with random weights and the embedded SmolLM2 tokenizer (vocabulary 49,152
# instead of Qwen's 151,936): the speed is representative, the text is not.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-}"
QUERIES="${QUERIES:-64}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
if [ -z "$MODEL" ]; then
    MODEL="${TMPDIR:-/tmp}/qwen3-4b-shape"
    "$PY" - "$MODEL" <<'PYEOF'
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from llmauction_sim.lm import registry

out = Path(sys.argv[1])
if not (out / "config.json").is_file():
    tok = AutoTokenizer.from_pretrained(registry.resolve_model(registry.EMBEDDED_MODEL))
    config = Qwen3Config(vocab_size=len(tok), hidden_size=2560, intermediate_size=9728,
                         num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=128, max_position_embeddings=8192, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
print(f"random Qwen3-4B-shaped model in {out}")
PYEOF
fi
"$PY" - "$MODEL" "$QUERIES" <<'PYEOF'
import json
import sys
import time

import numpy as np

sys.path.insert(0, "benchmarks")
from bench_generate import ad_llm_prompts  # the benchmark's 64 Ad-LLM prompts

from llmauction_sim.config import RunConfig
from llmauction_sim.lm.base import SamplingParams
from llmauction_sim.lm.registry import load_language_model

model, queries = sys.argv[1], int(sys.argv[2])
result = {"model": model, "queries": queries}
for backend in ("transformers", "vllm"):
    config = RunConfig().with_overrides([f"ad_llm.name={model}", f"ad_llm.backend={backend}",
                                         "ad_llm.max_batch_size=64"])
    lm = load_language_model(config.ad_llm, seed=0)
    prompts = ad_llm_prompts(config, queries, 0)
    params = [SamplingParams.from_config(config.ad_sampling, seed=i) for i in range(queries)]
    lm.generate(prompts[:2], params[:2])  # warm-up
    start = time.perf_counter()
    out = lm.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(c.num_tokens for row in out for c in row)
    result[backend] = {"tokens": tokens, "seconds": round(seconds, 2),
                       "tok_s": round(tokens / seconds, 1)}
    print(backend, result[backend], flush=True)
    del lm
result["ratio_vllm_over_transformers"] = round(result["vllm"]["tok_s"]
                                               / result["transformers"]["tok_s"], 2)
print(json.dumps(result))
with open("docs/results/gpu_check.json", "w") as f:
    json.dump({"generation": result}, f, indent=2)
PYEOF
SMOKE="${SMOKE_OUT:-runs/gpu-smoke}"
START=$(date +%s)
llmauction irpo --config paper_gpu_smoke --out "$SMOKE" --quiet
END=$(date +%s)
"$PY" - "$SMOKE" "$((END - START))" <<'PYEOF'
import json
import sys

out, seconds = sys.argv[1], int(sys.argv[2])
summary = json.load(open(f"{out}/summary.json"))
figures = json.load(open("docs/results/gpu_check.json"))
figures["smoke"] = {"seconds": seconds, "summary": summary}
json.dump(figures, open("docs/results/gpu_check.json", "w"), indent=2, default=str)
print(f"smoke run: {seconds} s; summary in {out}/summary.json")
PYEOF
