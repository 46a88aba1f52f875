"""Format warm start: a short SFT that teaches a small Ad-LLM the `@Title@[Ad-NNNN]` markup.

A model that never writes a valid mention gives IRPO nothing to learn from: every sampled answer has
reward 0, so no preference pair exists. The warm start takes the policy's own answers to training
auctions, inserts mentions of candidate ads chosen uniformly at random (independent of the bids and
of relevance), and fine-tunes on them (TRL `SFTTrainer`, LoRA, loss on the answer only). The adapter
is merged, so IRPO starts from a plain model that can write the markup but has no preference for
high bids or relevant ads: which ads to show, and how that depends on the bids, is still learned by
IRPO alone.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmauction_sim.config import DpoConfig, WarmStartConfig
from llmauction_sim.domain.mentions import render_mention

# Sentences that carry the inserted mention; {m} is the markup, {d} the ad's description.
TEMPLATES = (
    "For this, {m} could help: {d}.",
    "You may also like {m}, which offers {d}.",
    "One option worth a look is {m}: {d}.",
    "If it fits your plans, {m} is a good choice ({d}).",
    "Consider {m} as well: {d}.",
)

# Broken or half-written markup in the model's own answer is removed before insertion, so the SFT
# target never shows a malformed mention.
_MARKUP = re.compile(r"@[^@\n]*@\s*\[[^\]\n]*\]|[@\[\]]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class WarmStartExample:
    """One SFT row: the Ad-LLM prompt and the policy's own answer with mentions inserted."""
    prompt: list[dict[str, str]]
    completion: str
    inserted: tuple[str, ...]


def _describe(ad) -> str:
    text = ad.description.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else ad.title


def insert_mentions(answer: str, ads: Sequence, rng: np.random.Generator) -> str:
    """`answer` with one sentence per ad in `ads` mentioning it, placed after the first sentence
    (after the answer when it has one sentence); stray markup characters are removed first."""
    text = re.sub(r"[ \t]{2,}", " ", _MARKUP.sub("", answer)).strip()
    parts = _SENTENCE_END.split(text, maxsplit=1) if text else []
    inserted = [TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(
        m=render_mention(ad.title, ad.id), d=_describe(ad)) for ad in ads]
    if len(parts) < 2:
        return " ".join([*parts, *inserted])
    return " ".join([parts[0], *inserted, parts[1]])


def build_examples(requests, answers: Sequence[str], ads_per_answer: int,
                   rng: np.random.Generator) -> list[WarmStartExample]:
    """Pair each request's prompt with `answers[k]` plus `ads_per_answer` mentions of candidates
    drawn uniformly without replacement (bids play no part in the draw)."""
    from llmauction_sim.lm.prompts import ad_llm_messages

    out = []
    for r, answer in zip(requests, answers):
        k = min(ads_per_answer, len(r.candidates))
        picked = [r.candidates[i] for i in sorted(rng.choice(len(r.candidates), k, replace=False))]
        out.append(WarmStartExample(
            list(ad_llm_messages(r.profile, r.query, r.candidates, r.bids)),
            insert_mentions(answer, picked, rng), tuple(ad.id for ad in picked)))
    return out


@dataclass
class WarmStartResult:
    model: Any  # the merged model (no adapter)
    metrics: dict[str, float]


def run_sft(model, tokenizer, examples: Sequence[WarmStartExample], config: WarmStartConfig,
            lengths: DpoConfig, output_dir: str | os.PathLike | None = None) -> WarmStartResult:
    """SFT `model` on `examples` (loss on the answer only) with a LoRA adapter (`config`'s rank and
    targets; alpha = 2 x rank), sequences cut at `lengths.max_length`; write the adapter to
    `output_dir` and return the merged model."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("the warm start got no examples: set warmstart.queries >= 1 (or 0 to "
                         "skip the warm start)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = Dataset.from_list([{"prompt": e.prompt,
                               "completion": [{"role": "assistant", "content": e.completion}]}
                              for e in examples])
    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch, learning_rate=config.learning_rate, num_train_epochs=config.epochs,
            lr_scheduler_type="cosine", warmup_steps=0.1,
            per_device_train_batch_size=config.batch_size, max_length=lengths.max_length,
            completion_only_loss=True, packing=False, gradient_checkpointing=False,
            bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(), report_to=[],
            save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
            seed=config.seed, dataloader_num_workers=0)
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r,
                                 lora_dropout=0.0, target_modules=list(config.lora_target_modules),
                                 task_type="CAUSAL_LM")
        model.train()
        trainer = SFTTrainer(model=model, args=args, train_dataset=rows,
                             processing_class=tokenizer, peft_config=peft_config)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        history = trainer.state.log_history
        trained = trainer.model
        if output_dir is not None:
            trained.save_pretrained(str(output_dir))
    losses = [float(h["loss"]) for h in history if "loss" in h]
    metrics = {"examples": float(len(examples)), "steps": float(len(losses)),
               "loss_first": losses[0] if losses else float("nan"),
               "loss_last": losses[-1] if losses else float("nan"),
               "train_runtime_s": float(next((h["train_runtime"] for h in history
                                              if "train_runtime" in h), 0.0))}
    return WarmStartResult(trained.merge_and_unload().eval(), metrics)


def load_warm_started(base_model, adapter_dir: str | os.PathLike):
    """The base model with a saved warm-start adapter merged in (for resuming a run)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload().eval()
