"""The DPO phase under `accelerate launch`: shipped configs, the paper's GPU config, and a real
launch on the CPU (the same code path a multi-GPU node runs, with a CPU accelerate config)."""

from __future__ import annotations

import pytest
from test_learning import dpo_pairs
from tiny_models import embedded_tokenizer, tiny_llama

from llmauction_sim.config import ConfigError, RunConfig
from llmauction_sim.learning.dpo_launch import launch_command, launch_dpo_phase
from llmauction_sim.paths import RESOURCES, accelerate_config, shipped_config


@pytest.mark.parametrize("name,kind,stage", [("ddp", "MULTI_GPU", None),
                                             ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)])
def test_shipped_accelerate_configs_load(name, kind, stage) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(accelerate_config(name)))
    assert config.distributed_type.value == kind
    assert config.mixed_precision == "bf16" and config.num_processes == 8
    assert config.deepspeed_config.get("zero_stage") == stage
    if stage == 3:  # one gathered checkpoint, loadable by the next epoch's generation
        assert config.deepspeed_config["zero3_save_16bit_model"]


def test_paper_gpu_config_loads_and_validates_on_cpu() -> None:
    config = RunConfig.load(shipped_config("paper_gpu"))
    assert config.ad_llm.name == "Qwen/Qwen3-4B-Instruct-2507" and config.ad_llm.backend == "vllm"
    d = config.dpo
    assert (d.lora, d.bf16, d.learning_rate, d.lr_scheduler, d.warmup_ratio) == (
        False, True, 1e-6, "cosine", 0.1)
    assert d.batch_size * d.gradient_accumulation_steps * d.num_processes == 64
    assert accelerate_config(d.launcher).name == "zero3.yaml"
    assert (config.irpo.samples_per_query, config.irpo.candidates_per_prompt,
            config.irpo.delta_th, config.warmstart.queries) == (10, 5, 10.0, 0)
    assert config.retrieval.num_candidates == "all"
    # 8192-token pairs need recomputed activations (lm/memory.py); the llm judge has no pCTR.
    assert d.gradient_checkpointing and config.mechanisms.pctr_model == "embedding"
    assert sorted(p.stem for p in (RESOURCES / "configs").glob("*.toml")) == [
        "paper_gpu", "paper_gpu_smoke"]


def test_unknown_launcher_is_refused() -> None:
    with pytest.raises(ConfigError, match="dpo.launcher = 'zero4'.*ddp, zero2, zero3"):
        RunConfig().with_overrides(["dpo.launcher=zero4"])


def test_launch_command(tmp_path) -> None:
    config = RunConfig().with_overrides(["dpo.launcher=zero3", "dpo.num_processes=4"])
    cmd = launch_command(config, tmp_path / "pairs", "m", "a", tmp_path)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert cmd[4].endswith("zero3.yaml") and cmd[5:7] == ["--num_processes", "4"]
    assert cmd[-2:] == ["--adapter", "a"]


# The shipped ddp.yaml's launcher (torchrun, one process per rank) on a machine without GPUs: the
# ranks fall back to gloo on the CPU, so the distributed code path runs for real.
CPU_ACCELERATE = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 2
machine_rank: 0
main_process_ip: 127.0.0.1
main_process_port: 29517
mixed_precision: 'no'
use_cpu: false
rdzv_backend: static
same_network: true
"""


@pytest.mark.slow
def test_dpo_phase_under_accelerate_launch_with_two_ranks(tmp_path) -> None:
    tokenizer = embedded_tokenizer()
    model_dir = tmp_path / "policy"
    tiny_llama(tokenizer, hidden=32, intermediate=64, layers=1, heads=2,
               kv_heads=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    dpo_pairs().save_to_disk(str(tmp_path / "pairs"))
    (tmp_path / "cpu.yaml").write_text(CPU_ACCELERATE)
    config = RunConfig().with_overrides([
        f"dpo.launcher={tmp_path / 'cpu.yaml'}", "dpo.max_steps=2", "dpo.batch_size=1",
        "dpo.learning_rate=5e-3", "dpo.max_length=128"])
    out = tmp_path / "adapter"
    metrics = launch_dpo_phase(config, tmp_path / "pairs", str(model_dir), None, out)
    assert (out / "adapter_config.json").is_file()
    assert metrics["logged_steps"] == 2 and "loss" in metrics
    assert metrics["world_size"] == 2  # two ranks trained together (gloo DDP on the CPU)
    assert (out / "launch.log").is_file()
