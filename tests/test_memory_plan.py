"""The vLLM memory plan: arithmetic of what shares one GPU, and the engine settings it yields."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from llmauction_sim.config import ConfigError, RunConfig
from llmauction_sim.lm.memory import (
    GIB,
    ModelShape,
    check_plan,
    plan_memory,
    vllm_engine_args,
)
from llmauction_sim.paths import shipped_config

# Qwen3-4B (config.json of Qwen/Qwen3-4B-Instruct-2507).
QWEN3_4B = ModelShape(layers=36, hidden=2560, intermediate=9728, heads=32, kv_heads=8,
                      head_dim=128, vocab=151936, tied_embeddings=True)
H200 = int(139.8 * GIB)  # what torch reports for one H200


@pytest.fixture
def fake_vllm(monkeypatch) -> list[dict]:
    """A stand-in `vllm` module whose `LLM` records its keyword arguments in the returned list."""
    made: list[dict] = []

    class FakeLLM:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def get_tokenizer(self):
            return None

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=FakeLLM))
    return made


def paper(*overrides: str) -> RunConfig:
    return RunConfig.load(shipped_config("paper_gpu")).with_overrides(list(overrides))


def test_shape_arithmetic() -> None:
    assert QWEN3_4B.params == pytest.approx(4.02e9, rel=0.01)
    # K and V, 36 layers, 8 KV heads of 128, bf16: 144 KiB per token.
    assert QWEN3_4B.kv_bytes_per_token(2) == 2 * 36 * 8 * 128 * 2 == 147456
    assert 0.005 < QWEN3_4B.lora_params(16) / QWEN3_4B.params < 0.02
    hf = SimpleNamespace(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                         tie_word_embeddings=False)
    shape = ModelShape.from_hf_config(hf)
    assert (shape.head_dim, shape.kv_heads, shape.tied_embeddings) == (16, 2, False)


def test_paper_config_fits_one_h200_beside_rank_0() -> None:
    plan = check_plan(plan_memory(paper(), QWEN3_4B, H200))
    assert plan.engines == 2 and plan.max_model_len == 8192
    assert plan.weights == QWEN3_4B.params * 2
    assert plan.kv_per_sequence == 147456 * 8192
    # The planned share leaves training its memory: far below vLLM's default 0.9.
    assert 0.1 < plan.gpu_memory_utilization < 0.45
    assert plan.total <= plan.gpu and plan.sequences >= 8
    # DPO logits in float32: 2 x batch sequences of max_length over the vocabulary.
    assert plan.activations > 2 * 2 * 8192 * 151936 * 4


def test_check_refuses_what_cannot_fit_with_the_numbers() -> None:
    # Full fine-tuning of 4B on one GPU with 8192-token pairs and no recomputation: the
    # activations alone exceed the GPU.
    config = paper("dpo.launcher=", "dpo.gradient_checkpointing=false")
    plan = plan_memory(config, QWEN3_4B, H200)
    assert plan.gpu_memory_utilization == 0.0
    with pytest.raises(ConfigError, match=r"each gets 0\.0 GiB but needs 8\.\d GiB") as err:
        check_plan(plan)
    message = str(err.value)
    assert "GPU 139.8 GiB" in message and "activations + logits" in message
    assert "dpo.gradient_checkpointing = true" in message
    # Recomputing activations makes the same one-GPU run fit.
    fits = check_plan(plan_memory(paper("dpo.launcher=", "dpo.gradient_checkpointing=true"),
                                  QWEN3_4B, H200))
    assert fits.gpu_memory_utilization > 0
    # vLLM's own 0.9 per engine beside training: refused, naming the setting.
    with pytest.raises(ConfigError, match="lower vllm.gpu_memory_utilization"):
        check_plan(plan_memory(paper("vllm.gpu_memory_utilization=0.9"), QWEN3_4B, H200))
    # An engine alone on the GPU may take what it is given.
    alone = paper("vllm.gpu_memory_utilization=0.9", "vllm.colocate_training=false",
                  "user_llm.backend=transformers")
    assert check_plan(plan_memory(alone, QWEN3_4B, H200)).training == 0


def test_engine_args_and_what_reaches_vllm(fake_vllm) -> None:
    config = paper("vllm.gpu_memory_gib=139.8", "vllm.max_model_len=4096")
    args = vllm_engine_args(config, config.ad_llm, shape=QWEN3_4B)
    plan = plan_memory(config, QWEN3_4B)
    assert args == {"gpu_memory_utilization": plan.gpu_memory_utilization,
                    "max_model_len": 4096}
    assert vllm_engine_args(RunConfig(), RunConfig().ad_llm) is None  # transformers backend
    made = fake_vllm
    from llmauction_sim.lm import vllm as backend

    backend._engine.cache_clear()
    try:
        backend.load_vllm_model(RunConfig().ad_llm, engine_args=args)
        backend.load_vllm_model(RunConfig().ad_llm)
    finally:
        backend._engine.cache_clear()
    assert made[0]["gpu_memory_utilization"] == args["gpu_memory_utilization"]
    assert made[0]["max_model_len"] == 4096
    assert "gpu_memory_utilization" not in made[1]  # no plan given: vLLM's own defaults


def test_load_language_model_sizes_a_vllm_engine_by_the_plan(fake_vllm) -> None:
    from llmauction_sim.lm import vllm as backend
    from llmauction_sim.lm.registry import load_language_model

    made = fake_vllm
    config = RunConfig().with_overrides(["ad_llm.backend=vllm", "vllm.gpu_memory_gib=80"])
    backend._engine.cache_clear()
    try:
        lm = load_language_model(config.ad_llm, seed=3, run_config=config)
    finally:
        backend._engine.cache_clear()
    assert isinstance(lm, backend.VLLMModel)
    assert made == [{"model": made[0]["model"], "dtype": "auto", "enable_prefix_caching": True,
                     **vllm_engine_args(config, config.ad_llm)}]
