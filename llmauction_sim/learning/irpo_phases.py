"""IRPO's phases (paper Algorithm 1), one module function each so a phase can be replaced or
wrapped on its own; learning/irpo.py runs them in order and resumes them.

Each phase writes its outputs atomically under ``OUT/epoch-{t}/``; a ``load_*`` function reads a
completed phase's output back when a resumed run still needs it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd
from datasets import load_from_disk
from datasets.utils.logging import disable_progress_bar, enable_progress_bar
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llmauction_sim.domain.mentions import validate_response
from llmauction_sim.evaluation import evaluate, test_auctions
from llmauction_sim.learning.dpo import completion_logprobs, kl_estimate, run_dpo_phase
from llmauction_sim.learning.dpo_launch import launch_dpo_phase
from llmauction_sim.learning.irpo_folder import EPOCHS, atomic_dir, policy_paths, read_json
from llmauction_sim.learning.irpo_run import (
    IrpoRun,
    Streams,
    epoch_requests,
    epoch_samples,
    market_log,
    prompts,
    train_auctions,
    with_bids,
)
from llmauction_sim.learning.pairs import (
    ResponseGroup,
    build_preference_pairs,
    pair_composition,
    pair_stats,
    stratified_subset,
)
from llmauction_sim.learning.pctr import PctrModel
from llmauction_sim.learning.reward import oracle_rewards, pctr_rewards
from llmauction_sim.learning.warmstart import (
    build_examples,
    evaluate_gate,
    load_warm_started,
    own_answers,
    run_sft,
)
from llmauction_sim.lm.devices import resolve_dtype
from llmauction_sim.manifest import write_json
from llmauction_sim.rounds import judge_clicks
from llmauction_sim.runfolder import atomic_parquet


def collect_phase(run: IrpoRun, t: int) -> pd.DataFrame:
    """Deploy the policy on the training auctions and judge clicks -> the epoch's click log."""
    cfg = run.config
    market = market_log(run, t)
    if market is not None:  # the market already deployed the policy and judged the clicks
        requests, responses = epoch_requests(run, t), list(market["response"])
        sample_ids = [0] * len(requests)
        exposed = list(market["exposed"])
        clicked = [set(c) for c in market["clicked"]]
        probs = list(market["click_probabilities"])
    else:
        requests, allocations, sample_ids = epoch_samples(run, t, cfg.irpo.samples_per_query,
                                                          Streams.COLLECT)
        decisions = judge_clicks(run.judge, run.catalog, requests, allocations,
                                 np.random.default_rng([cfg.seed, Streams.COLLECT_CLICKS, t]))
        responses = [a.response for a in allocations]
        exposed = [a.exposed_ids for a in allocations]
        clicked = [set(d.clicked) for d in decisions]
        probs = [d.probabilities for d in decisions]
    rows = [{"epoch": t, "query_id": r.query_id, "sample": k, "user_id": r.profile.user_id,
             "ad_id": ad_id, "query": r.query, "response": text, "clicked": int(ad_id in c),
             "bid": float(r.bids[ad_id]), "click_probability": float(p.get(ad_id, math.nan))}
            for r, k, text, ads, c, p in zip(requests, sample_ids, responses, exposed, clicked,
                                             probs)
            for ad_id in ads]
    columns = ["epoch", "query_id", "sample", "user_id", "ad_id", "query", "response", "clicked",
               "bid", "click_probability"]
    log = pd.DataFrame(rows, columns=columns)
    atomic_parquet(log, run.epoch_dir(t) / "clicks.parquet")
    write_json(run.epoch_dir(t) / "collect.json",
               {"responses": len(responses),
                "source": "market" if market is not None else "policy",
                "exposures": len(log),
                "clicks": int(log["clicked"].sum()) if len(log) else 0})
    return log


def load_collect(run: IrpoRun, t: int) -> pd.DataFrame:
    return pd.read_parquet(run.epoch_dir(t) / "clicks.parquet")


def pctr_phase(run: IrpoRun, t: int):
    """Fit the pCTR model on every click log of epochs 1..t; None (and a note) when it cannot."""
    logs = [load_collect(run, s) for s in range(1, t + 1)
            if (run.out / f"epoch-{s}" / "clicks.parquet").is_file()]
    log = pd.concat(logs, ignore_index=True) if logs else pd.DataFrame()
    clicks = int(log["clicked"].sum()) if len(log) else 0
    info: dict[str, Any] = {"rows": len(log), "clicks": clicks, "skipped": False, "auc": None}
    model = None
    if clicks == 0 or clicks == len(log):
        what = "no exposures" if not len(log) else ("no clicks" if clicks == 0 else "no non-clicks")
        info.update(skipped=True, note=f"pCTR fit skipped: the click logs so far have {what}; "
                    "this epoch's reward falls back to the oracle (realised clicks)")
    else:
        model = PctrModel(run.config.pctr, encoder=run.pctr_encoder)
        try:
            report = model.fit(log)
        except ValueError as exc:  # e.g. every click landed in the held-out rows
            model = None
            info.update(skipped=True, note=f"pCTR fit skipped: {exc}; this epoch's reward falls "
                        "back to the oracle (realised clicks)")
        else:
            model.save(run.epoch_dir(t) / "pctr")
            info.update(auc=report.auc, log_loss=report.log_loss,
                        base_log_loss=report.base_log_loss)
    write_json(run.epoch_dir(t) / "pctr.json", info)
    return model


def load_pctr(run: IrpoRun, t: int):
    info = read_json(run.epoch_dir(t) / "pctr.json", {})
    if info.get("skipped", True):
        return None
    return PctrModel.load(run.epoch_dir(t) / "pctr", encoder=run.pctr_encoder)


def sample_phase(run: IrpoRun, t: int, pctr_model) -> pd.DataFrame:
    """M answers per training prompt, scored with R (pCTR, or the oracle when asked for or when
    there is no pCTR model this epoch)."""
    cfg = run.config
    flat_req, flat_alloc, sample_ids = epoch_samples(run, t, cfg.irpo.candidates_per_prompt,
                                                     Streams.SAMPLE)
    flat_resp = [a.response for a in flat_alloc]
    kind = cfg.irpo.reward if pctr_model is not None else "oracle"
    if kind == "pctr":
        scored = pctr_rewards(flat_req, flat_resp, pctr_model, cfg.penalty, 1.0, run.catalog.ids)
    else:
        decisions = judge_clicks(run.judge, run.catalog, flat_req, flat_alloc,
                                 np.random.default_rng([cfg.seed, Streams.SAMPLE_CLICKS, t]))
        clicks = [{i: int(i in d.clicked) for i in a.exposed_ids}
                  for a, d in zip(flat_alloc, decisions)]
        scored = oracle_rewards(flat_req, flat_resp, clicks, cfg.penalty, 1.0, run.catalog.ids)
    frame = pd.DataFrame({
        "query_id": [r.query_id for r in flat_req],
        "sample": sample_ids,
        "response": flat_resp,
        "reward": [b.reward for b in scored],
        "expected_revenue": [b.expected_revenue for b in scored],
        "penalty": [b.penalty for b in scored],
        "exposed": [list(b.exposed_ids) for b in scored],
        "reward_kind": kind})
    atomic_parquet(frame, run.epoch_dir(t) / "samples.parquet")
    return frame


def load_sample(run: IrpoRun, t: int) -> pd.DataFrame:
    return pd.read_parquet(run.epoch_dir(t) / "samples.parquet")


def pairs_phase(run: IrpoRun, t: int, samples: pd.DataFrame):
    """Winner / losers per prompt -> a `datasets.Dataset` saved under epoch-t/pairs."""
    requests = epoch_requests(run, t)
    by_id = {r.query_id: r for r in requests}
    by_prompt = dict(zip((r.query_id for r in requests), prompts(run, requests)))
    groups = [ResponseGroup(by_prompt[qid], list(g["response"]), list(g["reward"]), str(qid))
              for qid, g in samples.groupby("query_id", sort=False)]
    delta = run.config.irpo.delta_th
    pairs = build_preference_pairs(groups, delta)
    built, cap = len(pairs), run.config.irpo.max_pairs
    if cap and built > cap:  # spread over prompts, not crowded by a few with many losers
        pairs = pairs.select(stratified_subset(
            pairs["prompt_id"], cap, np.random.default_rng([run.config.seed, Streams.PAIRS, t])))
    pair_requests = [by_id[q] for q in pairs["prompt_id"]]

    def reports(column):
        return [validate_response(m[0]["content"], r.candidate_titles(), run.catalog.ids)
                for m, r in zip(pairs[column], pair_requests)]
    composition = pair_composition(reports("chosen"), reports("rejected"),
                                   [r.bids for r in pair_requests])
    with atomic_dir(run.epoch_dir(t) / "pairs") as tmp:
        if run.progress:
            pairs.save_to_disk(str(tmp))
        else:
            disable_progress_bar()  # `save_to_disk` draws a bar of its own
            try:
                pairs.save_to_disk(str(tmp))
            finally:
                enable_progress_bar()
    write_json(run.epoch_dir(t) / "pairs.json",
               {**pair_stats(groups, delta), "built": built, "kept": len(pairs),
                "composition": composition})
    run.say(f"epoch {t}: {len(pairs)} pairs; valid vs valid {composition.get('valid_vs_valid', 0):.0%}"
            f", chosen ad is the top bid {composition.get('chosen_top_bid', float('nan')):.0%}")
    return pairs


def load_pairs(run: IrpoRun, t: int):
    return load_from_disk(str(run.epoch_dir(t) / "pairs"))


def _kl_sample(run: IrpoRun, t: int) -> tuple[list, list[str]]:
    """Up to `irpo.kl_samples` of epoch t's sampled answers (drawn from the policy at the epoch's
    start) with their prompts: where the KL to the reference is estimated."""
    n = run.config.irpo.kl_samples
    path = run.epoch_dir(t) / "samples.parquet"
    if not n or not path.is_file():
        return [], []
    samples = pd.read_parquet(path, columns=["query_id", "response"]).head(n)
    requests = epoch_requests(run, t)
    by_prompt = dict(zip((r.query_id for r in requests), prompts(run, requests)))
    return [by_prompt[q] for q in samples["query_id"]], list(samples["response"])


def dpo_phase(run: IrpoRun, t: int, pairs) -> dict:
    """One DPO phase from the current policy; the new policy replaces it (wrapped again).
    Records `kl_to_reference`, the KL of the new policy to the epoch's start (`kl_estimate` on
    `irpo.kl_samples` of the epoch's sampled answers)."""
    info: dict[str, Any] = {"pairs": len(pairs), "skipped": False, "adapter": None}
    if len(pairs) == 0:
        info.update(skipped=True, kl_to_reference=0.0,
                    note="DPO skipped: no preference pairs this epoch; the policy is kept")
        write_json(run.epoch_dir(t) / "dpo.json", info)
        return info
    kl_prompts, kl_texts = _kl_sample(run, t)
    reference = completion_logprobs(run.model, run.tokenizer, kl_prompts, kl_texts)
    final = run.epoch_dir(t) / "adapter"
    if run.config.dpo.launcher:
        start = policy_paths(run.out)  # the policy at the epoch's start, as saved
        with atomic_dir(final) as tmp:
            metrics = launch_dpo_phase(run.config, run.epoch_dir(t) / "pairs",
                                       start["checkpoint"] or run.config.ad_llm.name,
                                       start["adapter"], tmp)
        info.update(adapter=str(final.relative_to(run.out)), metrics=metrics,
                    launcher=run.config.dpo.launcher)
        write_json(run.epoch_dir(t) / "dpo.json", info)
        restore_policy(run, t)
    else:
        with atomic_dir(final) as tmp:
            result = run_dpo_phase(run.model, run.tokenizer, pairs, run.config.dpo,
                                   output_dir=tmp)
        run.set_policy(result.model)
        info.update(adapter=str(final.relative_to(run.out)), metrics=result.metrics)
    policy = completion_logprobs(run.model, run.tokenizer, kl_prompts, kl_texts)
    info["kl_to_reference"] = kl_estimate(policy, reference) if kl_texts else None
    write_json(run.epoch_dir(t) / "dpo.json", info)
    return info


def warmstart_phase(run: IrpoRun) -> dict:
    """Epoch 0's starting policy, saved merged as OUT/epoch-0/policy (the base of later adapters,
    loadable on its own). With `warmstart.queries` the run trains its own format warm start
    (learning/warmstart.py: SFT on the policy's own answers to `warmstart.queries` training
    questions with a random candidate's mention inserted) and checks its gate on the test
    auctions; otherwise the starting policy is pi_0 (`mechanisms.policy_adapter`, e.g. the
    shipped warm start), merged when the run was set up."""
    cfg = run.config
    folder = run.epoch_dir(0)
    info: dict[str, Any] = {}
    if cfg.warmstart.queries:
        auctions = train_auctions(cfg, run.data, run.retriever, run.catalog,
                                  cfg.warmstart.queries, Streams.WARM_PICK)
        requests = with_bids(cfg, auctions, np.random.default_rng([cfg.seed, Streams.WARM_BIDS]))
        answers = own_answers(run.lm, requests, cfg.ad_sampling,
                              np.random.default_rng([cfg.seed, Streams.WARM_ANSWERS]))
        examples = build_examples(requests, answers, cfg.warmstart.ads_per_answer,
                                  np.random.default_rng([cfg.seed, Streams.WARM_INSERT]),
                                  cfg.ad_prompt,
                                  cfg.warmstart.no_ad_rate, cfg.warmstart.max_sentences)
        atomic_parquet(pd.DataFrame({"query_id": [r.query_id for r in requests],
                                     "answer": answers,
                                     "completion": [e.completion for e in examples],
                                     "inserted": [list(e.inserted) for e in examples]}),
                       folder / "warmstart.parquet")
        final = folder / "warmstart"
        with atomic_dir(final) as tmp:
            result = run_sft(run.model, run.tokenizer, examples, cfg.warmstart, cfg.dpo,
                             output_dir=tmp)
        run.base_model = result.model
        run.set_policy(result.model)
        info.update(adapter=str(final.relative_to(run.out)), metrics=result.metrics,
                    gate=_gate(run))
        if not info["gate"]["passed"]:
            run.say(f"warning: the warm start failed its gate {info['gate']['checks']} "
                    "(epoch-0/warmstart.json); IRPO goes on from it")
    else:
        info["start_adapter"] = run.start_adapter
    policy = folder / "policy"
    with atomic_dir(policy) as tmp:
        run.model.save_pretrained(str(tmp))
        run.tokenizer.save_pretrained(str(tmp))
    info["policy"] = str(policy.relative_to(run.out))
    write_json(folder / "warmstart.json", info)
    return info


def _gate(run: IrpoRun) -> dict:
    """The warm-start gate (learning/warmstart.py) of the current policy on the test auctions."""
    cfg = run.config
    tests, _, _ = test_auctions(cfg, cfg.irpo.test_queries, run.out, run.data,
                                retriever=run.retriever, catalog=run.catalog)
    return evaluate_gate(cfg, run.lm, tests, run.catalog.ids,
                         np.random.default_rng([cfg.seed, Streams.WARM_GATE]))


def restore_warmstart(run: IrpoRun) -> None:
    """Merge the saved warm-start adapter into the base model (resume after the warm start)."""
    info = read_json(run.out / "epoch-0" / "warmstart.json", {})
    if info.get("adapter"):
        run.base_model = load_warm_started(run.base_model, run.out / info["adapter"])
        run.set_policy(run.base_model)
        run.say("warm-started policy restored")


def restore_policy(run: IrpoRun, upto: int) -> None:
    """Rebuild the policy from the newest adapter (or full model) saved by epochs 1..upto."""
    for s in range(upto, 0, -1):
        info = read_json(run.out / f"epoch-{s}" / "dpo.json", {})
        if info.get("adapter"):
            path = run.out / info["adapter"]
            if run.config.dpo.lora:
                if isinstance(run.model, PeftModel):  # drop the old adapter's layers first
                    run.base_model = run.model.unload()
                model = PeftModel.from_pretrained(run.base_model, str(path), is_trainable=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    str(path), dtype=resolve_dtype(run.config.ad_llm.dtype, run.device()))
            run.set_policy(model.eval())
            run.say(f"policy restored from {path}")
            return


def evaluate_phase(run: IrpoRun, t: int, seconds: float) -> dict:
    """The policy on the test auctions; appends (or replaces) epoch t's row of epochs.parquet.
    `seconds`: the epoch's time before this phase (its own time is added)."""
    start = time.perf_counter()
    summary = evaluate(run.config, "pretrained", run.config.irpo.test_queries,
                       run.epoch_dir(t) / "eval", run.data, ad_lm=run.lm, judge=run.judge,
                       retriever=run.retriever)
    folder = run.out / f"epoch-{t}"
    pctr = read_json(folder / "pctr.json", {})
    dpo = read_json(folder / "dpo.json", {})
    samples = folder / "samples.parquet"
    kind = (pd.read_parquet(samples, columns=["reward_kind"])["reward_kind"].iloc[0]
            if samples.is_file() and len(pd.read_parquet(samples, columns=["reward_kind"]))
            else None)
    metrics = dpo.get("metrics", {})
    notes = [n for n in (pctr.get("note"), dpo.get("note")) if n]
    row = {"epoch": t, **{k: summary.get(k) for k in ("revenue_per_query", "reward_per_query",
                                                      "ctr", "format_error_rate")},
           "pctr_auc": pctr.get("auc"), "dpo_loss": metrics.get("loss"),
           "dpo_reward_accuracy": metrics.get("rewards/accuracies"),
           "pairs": dpo.get("pairs", 0 if t else None),
           "kl_to_reference": dpo.get("kl_to_reference"), "reward_kind": kind,
           "notes": "; ".join(notes), "seconds": seconds + time.perf_counter() - start}
    path = run.out / EPOCHS
    table = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
    if len(table):
        table = table[table["epoch"] != t]
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True).sort_values("epoch")
    for col in ("revenue_per_query", "reward_per_query", "ctr", "format_error_rate", "pctr_auc",
                "dpo_loss", "dpo_reward_accuracy", "kl_to_reference", "seconds"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    table["pairs"] = pd.to_numeric(table["pairs"], errors="coerce").astype("Int64")
    atomic_parquet(table.reset_index(drop=True), path)
    write_json(run.out / "summary.json", {
        "held_out": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                      for k, v in r.items()} for r in table.astype(object).to_dict("records")],
        "policy": policy_paths(run.out), "reward": run.config.irpo.reward,
        "warm_start": run.config.warmstart.queries > 0})
    return row
