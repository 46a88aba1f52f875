"""One DPO phase of IRPO (Algorithm 1, step 5) with TRL's `DPOTrainer`.

The reference policy is the policy at the start of the phase:

* LoRA (default): on a plain model the reference is the base model with the adapter disabled; on a
  model that already carries an adapter from an earlier phase, TRL copies that adapter into a frozen
  "ref" adapter. With `precompute_ref_log_probs` the reference log-probs are computed once, before
  the first update, from that same reference.
* Full fine-tuning: the reference log-probs are precomputed from the model before the first update
  (or, with precomputation off, a frozen copy of the model is the reference).

Defaults fit a CPU: fp32, no gradient checkpointing, small batches, no reports, no checkpoints
(only the final adapter or model is written, when an output folder is given).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmauction_sim.config import DpoConfig

#: Keys of the trainer's log history reported by `run_dpo_phase`.
DPO_METRICS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen",
               "rewards/rejected", "logps/chosen", "logps/rejected")


@dataclass
class DpoResult:
    """The trained policy (a PEFT model when LoRA is on), summary metrics and the raw log."""
    model: Any
    metrics: dict[str, float]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    output_dir: str | None = None
    is_main_process: bool = True  # False on the other ranks of a distributed launch


def _summarise(history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """First and last value of each DPO metric over the logged steps, and the step count."""
    steps = [h for h in history if "loss" in h and "train_loss" not in h]
    out: dict[str, float] = {"logged_steps": float(len(steps))}
    for key in DPO_METRICS:
        values = [float(h[key]) for h in steps if key in h]
        if values:
            out[f"{key}_first"] = values[0]
            out[key] = values[-1]
            out[f"{key}_mean"] = sum(values) / len(values)
    for h in history:
        if "train_loss" in h:
            out["train_loss"] = float(h["train_loss"])
            out["train_runtime_s"] = float(h.get("train_runtime", 0.0))
    return out


@contextlib.contextmanager
def compact_fused_head():
    """Within the block, TRL's fused LM head scores only the positions that have a label on a CPU
    too. TRL does so on Triton devices only and scores every position elsewhere, to keep tile
    shapes fixed for compilers such as Neuron's; a CPU compiles nothing, the result is the same,
    and an SFT step on Ad-LLM prompts (the answer ~a quarter of the tokens) runs 1.6x faster
    (docs/performance.md)."""
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def run_dpo_phase(model, tokenizer, pairs, config: DpoConfig | None = None,
                  output_dir: str | os.PathLike | None = None) -> DpoResult:
    """Train `model` (a causal LM, possibly already a PEFT model) with DPO on `pairs` (a
    `datasets.Dataset` from `pairs.build_preference_pairs`); the reference is `model` as passed.

    Writes only the final adapter (LoRA) or model to `output_dir` when one is given.
    """
    import torch
    from peft import LoraConfig, PeftModel
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    cfg = config or DpoConfig()
    if len(pairs) == 0:
        raise ValueError("no preference pairs for this DPO phase: every prompt's responses were "
                         "within delta_th of its best one; sample more responses per prompt or "
                         "lower delta_th")
    keep = ["prompt", "chosen", "rejected"]
    pairs = pairs.remove_columns([c for c in pairs.column_names if c not in keep])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    on_cpu = not torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="dpo-") as scratch:
        args = DPOConfig(
            output_dir=scratch, beta=cfg.beta, learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio,
            num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            max_length=cfg.max_length, precompute_ref_log_probs=cfg.precompute_ref_log_probs,
            gradient_checkpointing=cfg.gradient_checkpointing, bf16=cfg.bf16, fp16=False,
            use_cpu=on_cpu,
            report_to=[], save_strategy="no", eval_strategy="no",
            logging_steps=cfg.logging_steps, disable_tqdm=True, seed=cfg.seed,
            dataloader_num_workers=0, dataset_num_proc=None)
        peft_config = None
        ref_model = None
        if cfg.lora and not isinstance(model, PeftModel):
            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                     lora_dropout=cfg.lora_dropout,
                                     target_modules=list(cfg.lora_target_modules),
                                     task_type="CAUSAL_LM")
        elif not cfg.lora and not cfg.precompute_ref_log_probs:
            ref_model = copy.deepcopy(model).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        if not cfg.lora and isinstance(model, PeftModel):
            raise ValueError("full fine-tuning was asked for a model that carries a LoRA adapter; "
                             "merge it first (model.merge_and_unload()) or keep lora=true")
        model.train()
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=pairs,
                             processing_class=tokenizer, peft_config=peft_config)
        trainer.remove_callback(PrinterCallback)  # metrics go to the returned log history
        with compact_fused_head():
            trainer.train()
        history = list(trainer.state.log_history)
        trained = trainer.model
        if "ref" in getattr(trained, "peft_config", {}):
            trained.delete_adapter("ref")  # the phase's frozen reference copy is not the policy
        trained.eval()
        written = None
        if output_dir is not None:
            # The trainer saves on the main process only and gathers ZeRO-3 shards first.
            trainer.save_model(str(output_dir))
            written = str(output_dir)
        main = trainer.accelerator.is_main_process
    return DpoResult(trained, _summarise(history), history, written, main)


def completion_logprobs(model, tokenizer, prompts: Sequence[Sequence[Mapping[str, str]]],
                        completions: Sequence[str], batch_size: int = 8) -> list[float]:
    """Sum of the policy's token log-probs of each assistant `completions[k]` after `prompts[k]`
    (chat template applied as TRL does), e.g. to check a DPO phase's effect."""
    import torch

    out: list[float] = []
    model.eval()
    items = []
    for prompt, completion in zip(prompts, completions):
        head = tokenizer.apply_chat_template(list(prompt), tokenize=False,
                                             add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*prompt, {"role": "assistant", "content": completion}], tokenize=False)
        p_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        items.append((f_ids, len(p_ids)))
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            pad = tokenizer.pad_token_id or 0
            ids = torch.tensor([f + [pad] * (width - len(f)) for f, _ in chunk])
            mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f, _ in chunk])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(
                -1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            for row, (f, n_prompt) in enumerate(chunk):
                out.append(float(logps[row, n_prompt - 1:len(f) - 1].sum()))
    return out


def kl_estimate(logp_policy: Sequence[float], logp_reference: Sequence[float]) -> float:
    """KL(policy || reference) from answers sampled by the reference: with l = log pi - log
    pi_ref per answer and self-normalised importance weights w = softmax(l), the estimate is
    sum_i w_i log(n w_i), the KL of the reweighted sample to the plain one (>= 0; 0 when the
    policy did not change; it tends to the true KL as the sample grows)."""
    import numpy as np

    ratio = np.asarray(logp_policy, np.float64) - np.asarray(logp_reference, np.float64)
    if ratio.size == 0:
        raise ValueError("kl_estimate needs at least one answer")
    w = np.exp(ratio - ratio.max())
    w /= w.sum()
    return float(np.sum(w * np.log(np.maximum(ratio.size * w, 1e-300))))

