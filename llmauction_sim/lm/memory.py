"""GPU memory plan for vLLM engines that share one GPU with the DPO trainer.

Arithmetic over a model's shape and the run's settings (no GPU needed to plan): what training
holds on the GPU (the HF policy IRPO keeps, gradients and AdamW state of what is trained, a
reference copy when one is kept, activations and logits of one DPO batch), what each engine needs
at least (weights + the KV cache of one `max_model_len` sequence, which vLLM itself requires),
and the `gpu_memory_utilization` that leaves training its share. `check_plan` refuses a config
that cannot fit, with the numbers. Estimates, conservative where unsure: AdamW moments counted
in float32, DPO logits in float32 (chosen and rejected in one batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoConfig

from llmauction_sim.config import ConfigError
from llmauction_sim.lm.registry import resolve_model

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto = bf16 on a GPU
# Activation bytes per token, hidden unit and layer kept for backward in 16-bit without
# recomputation (Korthikanti et al. 2022, flash attention: no s^2 term).
ACTIVATION_BYTES = 34


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on: sizes of a decoder-only transformer."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool = False

    @property
    def params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * (attn + mlp + 2 * self.hidden) + embed + self.hidden

    def lora_params(self, r: int) -> int:
        """Trainable parameters of rank-r adapters on every attention and MLP linear."""
        q_o = 2 * r * (self.hidden + self.heads * self.head_dim)
        k_v = 2 * r * (self.hidden + self.kv_heads * self.head_dim)
        mlp = 3 * r * (self.hidden + self.intermediate)
        return self.layers * (q_o + k_v + mlp)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_hf_config(cls, cfg) -> ModelShape:
        """From a transformers `PretrainedConfig` (llama/qwen-style field names)."""
        cfg = getattr(cfg, "text_config", None) or cfg
        heads = cfg.num_attention_heads
        return cls(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                   intermediate=cfg.intermediate_size, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                   head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                   vocab=cfg.vocab_size,
                   tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)))


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes on the GPU, per part, and the engines' settings that follow."""
    gpu: int
    engines: int
    max_model_len: int
    weights: int  # one engine's (and the HF policy's) weights
    kv_per_sequence: int  # KV cache of one max_model_len sequence
    hf_policy: int
    optimizer: int  # gradients + AdamW moments of what is trained (rank 0's share)
    reference: int
    activations: int
    headroom: int
    gpu_memory_utilization: float

    @property
    def training(self) -> int:
        return self.hf_policy + self.optimizer + self.reference + self.activations

    @property
    def engine_budget(self) -> int:
        return int(self.gpu_memory_utilization * self.gpu)

    @property
    def engine_need(self) -> int:
        return self.weights + self.kv_per_sequence

    @property
    def sequences(self) -> float:
        """Full-length sequences one engine's KV cache holds at once."""
        return max(0.0, (self.engine_budget - self.weights) / self.kv_per_sequence)

    @property
    def total(self) -> int:
        return self.training + self.headroom + self.engines * self.engine_budget

    def describe(self) -> str:
        def g(x):
            return f"{x / GIB:.1f} GiB"

        return (f"GPU {g(self.gpu)}: training {g(self.training)} (HF policy {g(self.hf_policy)}, "
                f"gradients + AdamW {g(self.optimizer)}, reference {g(self.reference)}, "
                f"activations + logits {g(self.activations)}), headroom {g(self.headroom)}, "
                f"{self.engines} vLLM engine(s) x {g(self.engine_budget)} "
                f"(gpu_memory_utilization {self.gpu_memory_utilization:.3f}; each needs at "
                f"least weights {g(self.weights)} + KV cache of one {self.max_model_len}-token "
                f"sequence {g(self.kv_per_sequence)}; holds {self.sequences:.1f} such sequences)")


def vllm_engines(config) -> int:
    """Distinct engines a run may start: one per LLM role on the vllm backend (IRPO's policy
    engine reloads from the saved policy, so it is not shared with the User-LLM's)."""
    return sum(m.backend == "vllm" for m in (config.ad_llm, config.user_llm))


def plan_memory(config, shape: ModelShape, gpu_bytes: int | None = None) -> MemoryPlan:
    """The plan of `config` (a RunConfig) for a model of `shape` on a GPU of `gpu_bytes`
    (default `vllm.gpu_memory_gib`)."""
    v, dpo = config.vllm, config.dpo
    gpu = int(gpu_bytes if gpu_bytes is not None else v.gpu_memory_gib * GIB)
    if gpu <= 0:
        raise ValueError("plan_memory needs the GPU's memory: pass gpu_bytes or set "
                         "vllm.gpu_memory_gib")
    b = DTYPE_BYTES[config.ad_llm.dtype]
    engines = max(1, vllm_engines(config))
    max_len = v.max_model_len or dpo.max_length
    weights = shape.params * b
    hf_policy = optimizer = reference = activations = 0
    processes = 1
    if v.colocate_training:
        hf_policy = weights
        if dpo.launcher:  # ranks shard parameters, gradients and optimizer (ZeRO-3 at most)
            processes = max(1, dpo.num_processes)
        trained = shape.lora_params(dpo.lora_r) if dpo.lora else shape.params
        optimizer = trained * (b + 8)
        if dpo.launcher:  # rank 0 is a process of its own with its own model (or shard)
            optimizer = (weights + optimizer) // processes if not dpo.lora \
                else weights + optimizer
        if not dpo.lora and not dpo.precompute_ref_log_probs:
            reference = weights // (processes if dpo.launcher else 1)
        seqs, n = 2 * dpo.batch_size, dpo.max_length  # chosen and rejected in one batch
        per_layer = seqs * n * shape.hidden * ACTIVATION_BYTES * b // 2
        kept = seqs * n * shape.hidden * b
        hidden = (shape.layers * kept + per_layer if dpo.gradient_checkpointing
                  else shape.layers * per_layer)
        activations = hidden + seqs * n * shape.vocab * 4
    headroom = int(v.headroom_gib * GIB) * (1 + engines + (1 if dpo.launcher else 0))
    util = v.gpu_memory_utilization
    if not util:
        free = gpu - hf_policy - optimizer - reference - activations - headroom
        util = math.floor(max(0.0, free / engines / gpu) * 1000) / 1000  # down: never over
    return MemoryPlan(gpu, engines, max_len, weights,
                      shape.kv_bytes_per_token(b) * max_len, hf_policy, optimizer, reference,
                      activations, headroom, util)


def check_plan(plan: MemoryPlan) -> MemoryPlan:
    """The plan, or a ConfigError saying what does not fit and what to change."""
    fixes = ("shorten vllm.max_model_len or dpo.max_length, lower dpo.batch_size, set "
             "dpo.gradient_checkpointing = true or dpo.lora = true, shard DPO with dpo.launcher, "
             "or use a GPU with more memory")
    if plan.engine_budget < plan.engine_need:
        raise ConfigError(
            f"the vLLM engines do not fit: each gets {plan.engine_budget / GIB:.1f} GiB but needs "
            f"{plan.engine_need / GIB:.1f} GiB. {plan.describe()}. To fit: {fixes}")
    if plan.total > plan.gpu:
        raise ConfigError(
            f"the plan needs {plan.total / GIB:.1f} GiB of a {plan.gpu / GIB:.1f} GiB GPU. "
            f"{plan.describe()}. To fit: lower vllm.gpu_memory_utilization (0 = planned), or "
            f"{fixes}")
    return plan


def vllm_engine_args(config, model_config, shape: ModelShape | None = None,
                     gpu_bytes: int | None = None) -> dict | None:
    """`gpu_memory_utilization` and `max_model_len` for the engine of `model_config` (a role of
    `config`), checked; None when that role is not on vLLM. Reads the model's shape from its
    folder and the GPU's memory from torch when not given."""
    if model_config.backend != "vllm":
        return None
    if shape is None:
        shape = ModelShape.from_hf_config(AutoConfig.from_pretrained(
            resolve_model(model_config.name)))
    if gpu_bytes is None and not config.vllm.gpu_memory_gib:
        if not torch.cuda.is_available():
            raise RuntimeError("backend = 'vllm' needs a CUDA GPU (or set "
                               "vllm.gpu_memory_gib to plan without one)")
        gpu_bytes = torch.cuda.get_device_properties(0).total_memory
    plan = check_plan(plan_memory(config, shape, gpu_bytes))
    return {"gpu_memory_utilization": plan.gpu_memory_utilization,
            "max_model_len": plan.max_model_len}
