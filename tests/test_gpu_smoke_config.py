"""The one-H200 smoke config: loads and validates on the CPU, fits the GPU by the memory plan,
and its lengths pass IRPO's check on the embedded tokenizer."""

from __future__ import annotations

from test_memory_plan import H200, QWEN3_4B
from tiny_models import embedded_tokenizer

from llmauction_sim.config import RunConfig
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.learning.irpo import check_lengths
from llmauction_sim.lm.memory import ModelShape, check_plan, plan_memory
from llmauction_sim.mechanisms import AuctionRequest
from llmauction_sim.paths import shipped_config

# SmolLM2-135M-Instruct, the embedded model.
SMOLLM2_135M = ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3,
                          head_dim=64, vocab=49152, tied_embeddings=True)


def smoke(*overrides: str) -> RunConfig:
    return RunConfig.load(shipped_config("paper_gpu_smoke")).with_overrides(list(overrides))


def test_smoke_config_is_the_paper_path_at_small_size() -> None:
    c = smoke()
    assert (c.ad_llm.backend, c.user_llm.backend, c.clicks.judge) == ("vllm", "vllm", "llm")
    assert c.ad_llm.name == c.user_llm.name == "smollm2-135m-instruct"  # no hub needed
    assert c.data.profiles * c.data.queries_per_profile == 32
    assert c.irpo.epochs == 1 and c.irpo.train_queries + c.irpo.test_queries == 32
    assert (c.dpo.lora, c.dpo.bf16, c.dpo.gradient_checkpointing, c.dpo.launcher) == (
        False, True, True, "")  # full fine-tuning in process: the restore path of the paper
    assert c.mechanisms.pctr_model == "embedding" and c.warmstart.queries == 0
    assert abs(SMOLLM2_135M.params - 134.5e6) / 134.5e6 < 0.01


def test_smoke_config_fits_one_h200() -> None:
    plan = check_plan(plan_memory(smoke(), SMOLLM2_135M, H200))
    assert plan.max_model_len == 2048 and plan.engines == 2 and plan.sequences > 1000
    # A 4B model from a local folder, same settings, also fits on the one GPU.
    big = check_plan(plan_memory(smoke("ad_llm.name=/models/Qwen3-4B"), QWEN3_4B, H200))
    assert 0.1 < big.gpu_memory_utilization < 0.5


def test_smoke_lengths_pass_the_irpo_check(profile_factory) -> None:
    c = smoke()
    ads = sorted(load_catalog(), key=lambda a: -len(a.title + a.description))
    ads = tuple(ads[:c.retrieval.num_candidates])
    request = AuctionRequest("Q-1", profile_factory("running", "cooking", "travel"),
                             "Which running shoes and travel gear should I buy for a marathon "
                             "abroad next spring, on a budget?", ads,
                             {a.id: 100.0 for a in ads})
    check_lengths(c, embedded_tokenizer(), [request])
