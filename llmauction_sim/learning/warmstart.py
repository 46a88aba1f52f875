"""Format warm start: a short SFT that teaches a small Ad-LLM the `@Title@[Ad-NNNN]` markup.

A model that never writes a valid mention gives IRPO nothing to learn from: every sampled answer has
reward 0, so no preference pair exists. The warm start takes the policy's own answers to the
training questions (asked without the ad list, which a small model otherwise copies line by line),
keeps their first sentences, inserts after the first one a sentence mentioning a candidate drawn
uniformly at random (independent of the bids and of relevance), leaves a share `no_ad_rate` of the
answers without an ad, and fine-tunes on them with the full Ad-LLM prompt (TRL `SFTTrainer`, LoRA,
loss on the answer only). The policy so made writes the markup early in short answers but has no
preference for high bids or relevant ads: which ads to show, and how that depends on the bids, is
left to IRPO or to the tilted decoder. `gate_report` checks that on held-out auctions.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmauction_sim.config import DpoConfig, WarmStartConfig
from llmauction_sim.domain.mentions import render_mention
from llmauction_sim.learning.dpo import compact_fused_head
from llmauction_sim.lm.base import SamplingParams
from llmauction_sim.lm.devices import cpu_supports_bf16
from llmauction_sim.lm.prompts import ad_llm_messages, plain_answer_messages
from llmauction_sim.mechanisms.pretrained import SinglePassMechanism
from llmauction_sim.statistics import clustered_spearman, ratio_interval, wilson

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
# A first sentence longer than this (characters) comes after the mention, so that the mention
# starts within the answer's first few dozen tokens.
LONG_SENTENCE = 160


@dataclass(frozen=True)
class WarmStartExample:
    """One SFT row: the Ad-LLM prompt and the policy's own answer with mentions inserted."""
    prompt: list[dict[str, str]]
    completion: str
    inserted: tuple[str, ...]


def _describe(ad) -> str:
    text = ad.description.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else ad.title


def insert_mentions(answer: str, ads: Sequence, rng: np.random.Generator,
                    max_sentences: int = 0) -> str:
    """`answer` with one sentence per ad in `ads` mentioning it, placed after the first sentence
    (after the answer when it has one sentence, before it when its first sentence is longer than
    `LONG_SENTENCE` characters); stray markup characters are removed first and, with
    `max_sentences`, only the first sentences are kept (a last, unfinished one is dropped)."""
    text = re.sub(r"\s{2,}", " ", _MARKUP.sub("", answer)).strip()
    sentences = _SENTENCE_END.split(text) if text else []
    if max_sentences:
        finished = [s for s in sentences if s.rstrip()[-1:] in ".!?"]
        sentences = (finished or sentences)[:max_sentences]
    inserted = [TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(
        m=render_mention(ad.title, ad.id), d=_describe(ad)) for ad in ads]
    if not sentences:
        return " ".join(inserted)
    at = 0 if len(sentences[0]) > LONG_SENTENCE else 1
    return " ".join([*sentences[:at], *inserted, *sentences[at:]])


def build_examples(requests, answers: Sequence[str], ads_per_answer: int,
                   rng: np.random.Generator, prompt=None, no_ad_rate: float = 0.0,
                   max_sentences: int = 0) -> list[WarmStartExample]:
    """Pair each request's prompt with `answers[k]` plus `ads_per_answer` mentions of candidates
    drawn uniformly without replacement (bids play no part in the draw), or, with probability
    `no_ad_rate`, with no mention."""
    out = []
    for r, answer in zip(requests, answers):
        k = min(ads_per_answer, len(r.candidates))
        picked = [r.candidates[i] for i in sorted(rng.choice(len(r.candidates), k, replace=False))]
        if rng.random() < no_ad_rate:
            picked = []
        out.append(WarmStartExample(
            list(ad_llm_messages(r.profile, r.query, r.candidates, r.bids, prompt)),
            insert_mentions(answer, picked, rng, max_sentences), tuple(ad.id for ad in picked)))
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
    full = not config.lora
    rows = Dataset.from_list([{"prompt": e.prompt,
                               "completion": [{"role": "assistant", "content": e.completion}]}
                              for e in examples])
    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch, learning_rate=config.learning_rate, num_train_epochs=config.epochs,
            lr_scheduler_type="cosine", warmup_steps=0.1,
            per_device_train_batch_size=config.batch_size, max_length=lengths.max_length,
            completion_only_loss=True, packing=False, gradient_checkpointing=False,
            # Full fine-tuning keeps float32 master weights under bf16 autocast where bf16 is
            # native; LoRA trains float32 adapters on the model's own (bf16 or float32) weights.
            bf16=full and _native_bf16(), fp16=False, use_cpu=not torch.cuda.is_available(),
            report_to=[],
            save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
            seed=config.seed, dataloader_num_workers=0)
        peft_config = LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r,
                                 lora_dropout=0.0, target_modules=list(config.lora_target_modules),
                                 task_type="CAUSAL_LM")
        model.train()
        trainer = SFTTrainer(model=model, args=args, train_dataset=rows,
                             processing_class=tokenizer, peft_config=None if full else peft_config)
        trainer.remove_callback(PrinterCallback)
        with compact_fused_head():
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
    return WarmStartResult((trained if full else trained.merge_and_unload()).eval(), metrics)


def _native_bf16() -> bool:
    import torch

    return torch.cuda.is_available() or cpu_supports_bf16()


def load_warm_started(base_model, adapter_dir: str | os.PathLike):
    """The base model with a saved warm-start adapter merged in (for resuming a run)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload().eval()


@dataclass(frozen=True)
class GateThresholds:
    """What a warm start must show on held-out auctions before IRPO or the tilted decoder use it."""
    min_mention_rate: float = 0.6  # answers with at least one valid mention
    max_format_error_rate: float = 0.05  # answers with any format error
    first_mention_tokens: int = 48  # ... the first mention starts within this many new tokens
    min_early_share: float = 0.9  # ... in at least this share of the answers with a mention


def gate_report(requests, allocations, first_mention_tokens: Sequence[int | None],
                rng: np.random.Generator, thresholds: GateThresholds = GateThresholds()) -> dict:
    """The warm-start gate on held-out auctions: mention rate, format errors, how early the first
    mention comes, and whether the choice of ads is independent of the bids (the share of
    exposures that go to the top-bid candidate, against chance, and the Spearman correlation of
    exposure with bid, each with a 95% interval that must contain the bid-blind value)."""
    n = len(allocations)
    mentioned = [bool(a.exposed_ids) for a in allocations]
    errors = sum(a.report.has_format_error for a in allocations)
    early = [t is not None and t <= thresholds.first_mention_tokens
             for t, m in zip(first_mention_tokens, mentioned) if m]
    top = [sum(r.bids[i] == max(r.bids.values()) for i in a.exposed_ids)
           for r, a in zip(requests, allocations)]
    exposures = [len(a.exposed_ids) for a in allocations]
    chance = [e / len(r.candidates) for r, e in zip(requests, exposures)]
    top_share = ratio_interval(top, exposures, rng)
    chance_share = sum(chance) / max(1, sum(exposures))
    bids = [np.array([r.bids[ad.id] for ad in r.candidates]) for r in requests]
    shown = [np.array([ad.id in a.exposed_ids for ad in r.candidates], float)
             for r, a in zip(requests, allocations)]
    rho = clustered_spearman(bids, shown, rng)
    report = {
        "auctions": n,
        "mention_rate": wilson(sum(mentioned), n).to_dict(),
        "format_error_rate": wilson(errors, n).to_dict(),
        "early_mention_share": wilson(sum(early), len(early)).to_dict(),
        "median_first_mention_token": float(np.median([t for t in first_mention_tokens
                                                       if t is not None] or [np.nan])),
        "top_bid_exposure_share": top_share.to_dict(), "chance_top_bid_share": chance_share,
        "spearman_exposure_bid": rho.to_dict(),
        "thresholds": dataclasses.asdict(thresholds)}
    checks = {
        "mention_rate": bool(sum(mentioned) / max(1, n) >= thresholds.min_mention_rate),
        "format_errors": bool(errors / max(1, n) <= thresholds.max_format_error_rate),
        "early_mentions": bool(early) and bool(np.mean(early) >= thresholds.min_early_share),
        "bid_blind": bool(top_share.contains(chance_share) and rho.contains(0.0))}
    report["checks"] = checks
    report["passed"] = all(checks.values())
    return report


def own_answers(lm, requests, sampling, rng: np.random.Generator,
                max_new_tokens: int = 72) -> list[str]:
    """The policy's own answers to the requests' questions, asked without the ad list
    (`plain_answer_messages`), one per request, in one batched call."""
    params = [SamplingParams.from_config(sampling, max_new_tokens=max_new_tokens, seed=int(s))
              for s in rng.integers(0, 2**63, len(requests))]
    return [row[0].text for row in lm.generate([plain_answer_messages(r.query)
                                                for r in requests], params)]


def first_mention_tokens(tokenizer, allocations) -> list[int | None]:
    """Per answer, how many tokens precede its first valid mention (None without one)."""
    out = []
    for a in allocations:
        if not a.report.valid:
            out.append(None)
            continue
        start = min(m.start for m in a.report.valid)
        out.append(len(tokenizer(a.response[:start], add_special_tokens=False)["input_ids"]))
    return out


def evaluate_gate(config, policy_lm, requests, catalog_ids, rng: np.random.Generator,
                  thresholds: GateThresholds = GateThresholds()) -> dict:
    """`gate_report` of a policy answering `requests` in one pass (the `llm_auction` mechanism
    with the run's prompt and sampling)."""
    mechanism = SinglePassMechanism("llm_auction", policy_lm, config.ad_sampling, config.penalty,
                                    catalog_ids, config.ad_prompt)
    allocations = mechanism.allocate(requests, rng)
    return gate_report(requests, allocations,
                       first_mention_tokens(policy_lm.tokenizer, allocations), rng, thresholds)
