"""The IRPO loop (paper Algorithm 1): deploy, collect clicks, refit pCTR, sample, pair, DPO, evaluate.

Per epoch t = 1..`irpo.epochs` the phases below run in order; each writes its outputs atomically
under ``OUT/epoch-{t}/`` and then records itself in ``OUT/state.json`` as the last completed phase:

1. ``collect``  - the current policy answers every training auction `samples_per_query` times (bids
   redrawn per epoch from a generator seeded by (seed, t)); the click judge decides the clicks ->
   ``clicks.parquet``, one row per exposed ad.
2. ``pctr``     - the pCTR model is fitted on every click log so far -> ``pctr/`` and ``pctr.json``.
   With no clicks or no non-clicks the fit is skipped (the note says why) and this epoch's reward
   falls back to the oracle (realised clicks).
3. ``sample``   - M = `candidates_per_prompt` answers per training prompt, scored with R ->
   ``samples.parquet``.
4. ``pairs``    - winner / losers with `delta_th` -> ``pairs/`` (a `datasets` folder), ``pairs.json``.
5. ``dpo``      - one DPO phase, reference = the policy at epoch start -> ``adapter/`` (LoRA) or the
   full model, and ``dpo.json``. With no pairs the phase is skipped and the policy kept.
6. ``evaluate`` - the policy on the test auctions -> ``eval/`` and one row of ``OUT/epochs.parquet``.

Epoch 0 is an ``evaluate`` of the starting policy. When ``OUT/epoch-{t}/market.parquet`` exists
(written by the joint market schedule, market/joint.py), epoch t trains on the market instead: its
training auctions are the market's logged auctions with the advertisers' bids, and ``collect``
takes the market's answers and clicks rather than deploying the policy again.

With ``resume=True`` the run restarts at the phase
after the last completed one; completed phases' outputs are loaded, not recomputed, and the policy is
rebuilt from the newest saved adapter. Each phase also saves the sentence vectors it computed
(``epoch-{t}/encoder-{phase}.npz``), which a resume reuses: a text encoded again in another batch
would differ in its last bits. OUT/run.json and OUT/.lock: see runfolder.py.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmauction_sim.config import RunConfig
from llmauction_sim.lm.encoder import MemoLog
from llmauction_sim.tables import read_query_log

PHASES = ("warmstart", "collect", "pctr", "sample", "pairs", "dpo", "evaluate")
STATE = "state.json"
EPOCHS = "epochs.parquet"
ENGINE_POLICY = "policy-engine"  # the current policy's merged weights, read by a vLLM engine

# Independent seed streams (mixed with config.seed and the epoch).
_PICK, _BIDS, _COLLECT, _COLLECT_CLICKS, _SAMPLE, _SAMPLE_CLICKS = 31, 32, 33, 34, 35, 36
_WARM_PICK, _WARM_BIDS, _WARM_ANSWERS, _WARM_INSERT, _PAIRS, _WARM_GATE = 37, 38, 39, 40, 41, 42


@dataclass
class IrpoRun:
    """What the phases share: settings, auctions, the click judge and the current policy."""
    config: RunConfig
    out: Path
    data: Path
    train: list  # AuctionRequest without meaningful bids (redrawn per epoch)
    catalog: Any
    retriever: Any
    judge: Any
    tokenizer: Any
    model: Any
    lm: Any
    make_lm: Callable[[Any, Any], Any]
    pctr_encoder: Any = None
    base_model: Any = None
    progress: bool = True
    start_adapter: str | None = None  # pi_0's adapter, merged into the starting policy
    notes: list[str] = field(default_factory=list)
    done: tuple[int, int] = (-1, -1)  # (epoch, phase index) of the last completed phase
    seconds: dict[str, float] = field(default_factory=dict)
    folder: Any = None  # the locked RunFolder of OUT (runfolder.py), released by close()
    memo: Any = None  # lm.encoder.MemoLog: sentence vectors per phase, reused on resume
    _profiles: dict | None = None

    def close(self) -> None:
        """Release OUT's lock (also released when the process ends)."""
        if self.folder is not None:
            self.folder.close()

    def epoch_dir(self, t: int) -> Path:
        path = self.out / f"epoch-{t}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[irpo] {text}", file=sys.stderr, flush=True)

    def device(self):
        from llmauction_sim.lm.devices import resolve_device

        return resolve_device(self.config.ad_llm.device)

    def place(self) -> None:
        """Policy and reference (the base model) on `ad_llm.device`: a model loaded from a
        folder, or handed back by a trainer, lands wherever its loader put it (the CPU)."""
        device = self.device()
        self.model = self.model.to(device)
        if self.base_model is not None and self.base_model is not self.model:
            self.base_model = self.base_model.to(device)

    def set_policy(self, model) -> None:
        self.model = model
        self.place()
        self.lm = self.make_lm(self.model, self.tokenizer)

    def profile(self, user_id: str):
        if self._profiles is None:
            from llmauction_sim.data import load_dataset
            from llmauction_sim.domain.users import profiles_from_frame

            self._profiles = {p.user_id: p for p in profiles_from_frame(load_dataset(self.data)[0])}
        return self._profiles[user_id]

    def finish(self, t: int, phase: str, elapsed: float) -> None:
        """Record phase `phase` of epoch t as completed (OUT/state.json)."""
        self.seconds[str(t)] = self.seconds.get(str(t), 0.0) + elapsed
        self.done = (t, PHASES.index(phase))
        if self.memo is not None:
            self.memo.save(self.epoch_dir(t) / f"encoder-{phase}.npz")
        _write_json(self.out / STATE, {"epoch": t, "phase": phase, "seconds": self.seconds})


# ------------------------------------------------------------------------------------------------
# Small helpers


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def _write_json(path: Path, data) -> None:
    from llmauction_sim.manifest import write_json

    write_json(path, data)


def _with_bids(config: RunConfig, auctions, rng: np.random.Generator) -> list:
    """`auctions` with integer bids uniform over market.bid_low..bid_high drawn from `rng`."""
    from llmauction_sim.mechanisms import AuctionRequest

    low, high = config.market.bid_low, config.market.bid_high
    out = []
    for r in auctions:
        bids = rng.integers(low, high + 1, len(r.candidates))
        out.append(AuctionRequest(r.query_id, r.profile, r.query, r.candidates,
                                  {ad.id: float(b) for ad, b in zip(r.candidates, bids)}))
    return out


MARKET_LOG = "market.parquet"


def market_log(run: IrpoRun, t: int) -> pd.DataFrame | None:
    """The market rounds epoch t trains on (the `queries.parquet` rows of a market run), if any."""
    path = run.out / f"epoch-{t}" / MARKET_LOG
    return read_query_log(path) if path.is_file() else None


def epoch_requests(run: IrpoRun, t: int) -> list:
    """The training auctions of epoch t: the market's logged auctions with their bids when epoch t
    trains on a market; otherwise fixed queries and candidates with integer bids redrawn from a
    generator seeded by (seed, t)."""
    from llmauction_sim.mechanisms import AuctionRequest

    log = market_log(run, t)
    if log is None:
        return _with_bids(run.config, run.train,
                          np.random.default_rng([run.config.seed, _BIDS, t]))
    # A query can be asked more than once: the row number keeps each auction's id unique.
    return [AuctionRequest(f"{qid}#{i}", run.profile(uid), text,
                           tuple(run.catalog.by_id(a) for a in cands),
                           {k: float(v) for k, v in bids.items()})
            for i, (qid, uid, text, cands, bids) in enumerate(zip(
                log["query_id"], log["user_id"], log["query"], log["candidates"], log["bids"]))]


def _prompts(run_or_config, requests) -> list:
    """The Ad-LLM prompts of `requests` (`run_or_config`: an IrpoRun or its RunConfig)."""
    from llmauction_sim.lm.prompts import ad_llm_messages

    config = getattr(run_or_config, "config", run_or_config)
    return [ad_llm_messages(r.profile, r.query, r.candidates, r.bids, config.ad_prompt)
            for r in requests]


def _generate(run: IrpoRun, requests, n: int, rng: np.random.Generator) -> list[list[str]]:
    from llmauction_sim.lm.base import SamplingParams

    params = [SamplingParams.from_config(run.config.ad_sampling, n=n, seed=int(s))
              for s in rng.integers(0, 2**63, len(requests))]
    return [[c.text for c in row] for row in run.lm.generate(_prompts(run, requests), params)]


def _epoch_samples(run: IrpoRun, t: int, n: int, stream: int):
    """`n` answers of the policy per training auction of epoch t, flattened: (requests, answers,
    sample index within its auction)."""
    requests = epoch_requests(run, t)
    samples = _generate(run, requests, n, np.random.default_rng([run.config.seed, stream, t]))
    return ([r for r, row in zip(requests, samples) for _ in row],
            [text for row in samples for text in row],
            [k for row in samples for k in range(len(row))])


def _judge(run: IrpoRun, requests, responses, rng: np.random.Generator):
    """(mention reports, click decisions) of `responses[k]` answering `requests[k]`."""
    from llmauction_sim.clicks.base import ClickRequest
    from llmauction_sim.domain.mentions import validate_response

    ids = run.catalog.ids
    reports = [validate_response(text, r.candidate_titles(), ids)
               for r, text in zip(requests, responses)]
    decisions = run.judge.judge(
        [ClickRequest(r.profile, r.query, text, tuple(run.catalog.by_id(i)
                                                      for i in rep.exposed_ids), rep.valid)
         for r, text, rep in zip(requests, responses, reports)], rng)
    return reports, decisions


# ------------------------------------------------------------------------------------------------
# Phases (module functions, so each can be replaced or wrapped on its own)


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
        requests, responses, sample_ids = _epoch_samples(run, t, cfg.irpo.samples_per_query,
                                                         _COLLECT)
        reports, decisions = _judge(run, requests, responses,
                                    np.random.default_rng([cfg.seed, _COLLECT_CLICKS, t]))
        exposed = [rep.exposed_ids for rep in reports]
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
    _write_parquet(log, run.epoch_dir(t) / "clicks.parquet")
    _write_json(run.epoch_dir(t) / "collect.json",
                {"responses": len(responses),
                 "source": "market" if market is not None else "policy",
                 "exposures": len(log),
                 "clicks": int(log["clicked"].sum()) if len(log) else 0})
    return log


def load_collect(run: IrpoRun, t: int) -> pd.DataFrame:
    return pd.read_parquet(run.epoch_dir(t) / "clicks.parquet")


def pctr_phase(run: IrpoRun, t: int):
    """Fit the pCTR model on every click log of epochs 1..t; None (and a note) when it cannot."""
    from llmauction_sim.learning.pctr import PctrModel

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
    _write_json(run.epoch_dir(t) / "pctr.json", info)
    return model


def load_pctr(run: IrpoRun, t: int):
    from llmauction_sim.learning.pctr import PctrModel

    info = _read_json(run.epoch_dir(t) / "pctr.json", {})
    if info.get("skipped", True):
        return None
    return PctrModel.load(run.epoch_dir(t) / "pctr", encoder=run.pctr_encoder)


def sample_phase(run: IrpoRun, t: int, pctr_model) -> pd.DataFrame:
    """M answers per training prompt, scored with R (pCTR, or the oracle when asked for or when
    there is no pCTR model this epoch)."""
    from llmauction_sim.learning.reward import oracle_rewards, pctr_rewards

    cfg = run.config
    flat_req, flat_resp, sample_ids = _epoch_samples(run, t, cfg.irpo.candidates_per_prompt,
                                                     _SAMPLE)
    kind = cfg.irpo.reward if pctr_model is not None else "oracle"
    if kind == "pctr":
        scored = pctr_rewards(flat_req, flat_resp, pctr_model, cfg.penalty, 1.0, run.catalog.ids)
    else:
        reports, decisions = _judge(run, flat_req, flat_resp,
                                    np.random.default_rng([cfg.seed, _SAMPLE_CLICKS, t]))
        clicks = [{i: int(i in d.clicked) for i in rep.exposed_ids}
                  for rep, d in zip(reports, decisions)]
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
    _write_parquet(frame, run.epoch_dir(t) / "samples.parquet")
    return frame


def load_sample(run: IrpoRun, t: int) -> pd.DataFrame:
    return pd.read_parquet(run.epoch_dir(t) / "samples.parquet")


def pairs_phase(run: IrpoRun, t: int, samples: pd.DataFrame):
    """Winner / losers per prompt -> a `datasets.Dataset` saved under epoch-t/pairs."""
    from llmauction_sim.domain.mentions import validate_response
    from llmauction_sim.learning.pairs import (
        ResponseGroup,
        build_preference_pairs,
        pair_composition,
        pair_stats,
        stratified_subset,
    )

    requests = epoch_requests(run, t)
    by_id = {r.query_id: r for r in requests}
    prompts = dict(zip((r.query_id for r in requests), _prompts(run, requests)))
    groups = [ResponseGroup(prompts[qid], list(g["response"]), list(g["reward"]), str(qid))
              for qid, g in samples.groupby("query_id", sort=False)]
    delta = run.config.irpo.delta_th
    pairs = build_preference_pairs(groups, delta)
    built, cap = len(pairs), run.config.irpo.max_pairs
    if cap and built > cap:  # spread over prompts, not crowded by a few with many losers
        pairs = pairs.select(stratified_subset(
            pairs["prompt_id"], cap, np.random.default_rng([run.config.seed, _PAIRS, t])))
    pair_requests = [by_id[q] for q in pairs["prompt_id"]]

    def reports(column):
        return [validate_response(m[0]["content"], r.candidate_titles(), run.catalog.ids)
                for m, r in zip(pairs[column], pair_requests)]
    composition = pair_composition(reports("chosen"), reports("rejected"),
                                   [r.bids for r in pair_requests])
    final = run.epoch_dir(t) / "pairs"
    tmp = final.with_name(f".pairs.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if run.progress:
        pairs.save_to_disk(str(tmp))
    else:
        from datasets.utils.logging import disable_progress_bar, enable_progress_bar

        disable_progress_bar()  # `save_to_disk` draws a bar of its own
        try:
            pairs.save_to_disk(str(tmp))
        finally:
            enable_progress_bar()
    _replace_dir(tmp, final)
    _write_json(run.epoch_dir(t) / "pairs.json",
                {**pair_stats(groups, delta), "built": built, "kept": len(pairs),
                 "composition": composition})
    run.say(f"epoch {t}: {len(pairs)} pairs; valid vs valid {composition.get('valid_vs_valid', 0):.0%}"
            f", chosen ad is the top bid {composition.get('chosen_top_bid', float('nan')):.0%}")
    return pairs


def load_pairs(run: IrpoRun, t: int):
    from datasets import load_from_disk

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
    prompts = dict(zip((r.query_id for r in requests), _prompts(run, requests)))
    return [prompts[q] for q in samples["query_id"]], list(samples["response"])


def dpo_phase(run: IrpoRun, t: int, pairs) -> dict:
    """One DPO phase from the current policy; the new policy replaces it (wrapped again).
    Records `kl_to_reference`, the KL of the new policy to the epoch's start (`kl_estimate` on
    `irpo.kl_samples` of the epoch's sampled answers)."""
    from llmauction_sim.learning.dpo import completion_logprobs, kl_estimate, run_dpo_phase

    info: dict[str, Any] = {"pairs": len(pairs), "skipped": False, "adapter": None}
    if len(pairs) == 0:
        info.update(skipped=True, kl_to_reference=0.0,
                    note="DPO skipped: no preference pairs this epoch; the policy is kept")
        _write_json(run.epoch_dir(t) / "dpo.json", info)
        return info
    kl_prompts, kl_texts = _kl_sample(run, t)
    reference = completion_logprobs(run.model, run.tokenizer, kl_prompts, kl_texts)
    final = run.epoch_dir(t) / "adapter"
    tmp = final.with_name(f".adapter.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if run.config.dpo.launcher:
        from llmauction_sim.learning.dpo_launch import launch_dpo_phase

        start = policy_paths(run.out)  # the policy at the epoch's start, as saved
        metrics = launch_dpo_phase(run.config, run.epoch_dir(t) / "pairs",
                                   start["checkpoint"] or run.config.ad_llm.name,
                                   start["adapter"], tmp)
        _replace_dir(tmp, final)
        info.update(adapter=str(final.relative_to(run.out)), metrics=metrics,
                    launcher=run.config.dpo.launcher)
        _write_json(run.epoch_dir(t) / "dpo.json", info)
        restore_policy(run, t)
    else:
        result = run_dpo_phase(run.model, run.tokenizer, pairs, run.config.dpo, output_dir=tmp)
        _replace_dir(tmp, final)
        run.set_policy(result.model)
        info.update(adapter=str(final.relative_to(run.out)), metrics=result.metrics)
    policy = completion_logprobs(run.model, run.tokenizer, kl_prompts, kl_texts)
    info["kl_to_reference"] = kl_estimate(policy, reference) if kl_texts else None
    _write_json(run.epoch_dir(t) / "dpo.json", info)
    return info


def warmstart_phase(run: IrpoRun) -> dict:
    """Epoch 0's starting policy, saved merged as OUT/epoch-0/policy (the base of later adapters,
    loadable on its own). With `warmstart.queries` the run trains its own format warm start
    (learning/warmstart.py: SFT on the policy's own answers to `warmstart.queries` training
    questions with a random candidate's mention inserted) and checks its gate on the test
    auctions; otherwise the starting policy is pi_0 (`mechanisms.policy_adapter`, e.g. the
    shipped warm start), merged when the run was set up."""
    from llmauction_sim.learning.warmstart import build_examples, own_answers, run_sft

    cfg = run.config
    folder = run.epoch_dir(0)
    info: dict[str, Any] = {}
    if cfg.warmstart.queries:
        auctions = _train_auctions(cfg, run.data, run.retriever, run.catalog,
                                   cfg.warmstart.queries, _WARM_PICK)
        requests = _with_bids(cfg, auctions, np.random.default_rng([cfg.seed, _WARM_BIDS]))
        answers = own_answers(run.lm, requests, cfg.ad_sampling,
                              np.random.default_rng([cfg.seed, _WARM_ANSWERS]))
        examples = build_examples(requests, answers, cfg.warmstart.ads_per_answer,
                                  np.random.default_rng([cfg.seed, _WARM_INSERT]), cfg.ad_prompt,
                                  cfg.warmstart.no_ad_rate, cfg.warmstart.max_sentences)
        _write_parquet(pd.DataFrame({"query_id": [r.query_id for r in requests],
                                     "answer": answers,
                                     "completion": [e.completion for e in examples],
                                     "inserted": [list(e.inserted) for e in examples]}),
                       folder / "warmstart.parquet")
        final = folder / "warmstart"
        tmp = final.with_name(f".warmstart.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        result = run_sft(run.model, run.tokenizer, examples, cfg.warmstart, cfg.dpo,
                         output_dir=tmp)
        _replace_dir(tmp, final)
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
    tmp = policy.with_name(f".policy.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(str(tmp))
    run.tokenizer.save_pretrained(str(tmp))
    _replace_dir(tmp, policy)
    info["policy"] = str(policy.relative_to(run.out))
    _write_json(folder / "warmstart.json", info)
    return info


def _gate(run: IrpoRun) -> dict:
    """The warm-start gate (learning/warmstart.py) of the current policy on the test auctions."""
    from llmauction_sim.evaluation import test_auctions
    from llmauction_sim.learning.warmstart import evaluate_gate

    cfg = run.config
    tests, _, _ = test_auctions(cfg, cfg.irpo.test_queries, run.out, run.data,
                                retriever=run.retriever, catalog=run.catalog)
    return evaluate_gate(cfg, run.lm, tests, run.catalog.ids,
                         np.random.default_rng([cfg.seed, _WARM_GATE]))


def _start_config(config: RunConfig):
    """The ModelConfig of the run's starting policy: the plain Ad-LLM when the run trains its own
    warm start, else pi_0 (`mechanisms.policy_adapter` on ad_llm)."""
    from llmauction_sim.mechanisms.base import policy_config

    return config.ad_llm if config.warmstart.queries else policy_config(config)


def restore_warmstart(run: IrpoRun) -> None:
    """Merge the saved warm-start adapter into the base model (resume after the warm start)."""
    from llmauction_sim.learning.warmstart import load_warm_started

    info = _read_json(run.out / "epoch-0" / "warmstart.json", {})
    if info.get("adapter"):
        run.base_model = load_warm_started(run.base_model, run.out / info["adapter"])
        run.set_policy(run.base_model)
        run.say("warm-started policy restored")


def restore_policy(run: IrpoRun, upto: int) -> None:
    """Rebuild the policy from the newest adapter (or full model) saved by epochs 1..upto."""
    for s in range(upto, 0, -1):
        info = _read_json(run.out / f"epoch-{s}" / "dpo.json", {})
        if info.get("adapter"):
            path = run.out / info["adapter"]
            if run.config.dpo.lora:
                from peft import PeftModel

                if isinstance(run.model, PeftModel):  # drop the old adapter's layers first
                    run.base_model = run.model.unload()
                model = PeftModel.from_pretrained(run.base_model, str(path), is_trainable=True)
            else:
                from transformers import AutoModelForCausalLM

                from llmauction_sim.lm.devices import resolve_dtype

                model = AutoModelForCausalLM.from_pretrained(
                    str(path), dtype=resolve_dtype(run.config.ad_llm.dtype, run.device()))
            run.set_policy(model.eval())
            run.say(f"policy restored from {path}")
            return


def evaluate_phase(run: IrpoRun, t: int, seconds: float) -> dict:
    """The policy on the test auctions; appends (or replaces) epoch t's row of epochs.parquet.
    `seconds`: the epoch's time before this phase (its own time is added)."""
    from llmauction_sim.evaluation import evaluate

    start = time.perf_counter()
    summary = evaluate(run.config, "pretrained", run.config.irpo.test_queries,
                       run.epoch_dir(t) / "eval", run.data, ad_lm=run.lm, judge=run.judge,
                       retriever=run.retriever)
    folder = run.out / f"epoch-{t}"
    pctr = _read_json(folder / "pctr.json", {})
    dpo = _read_json(folder / "dpo.json", {})
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
    _write_parquet(table.reset_index(drop=True), path)
    _write_json(run.out / "summary.json", {
        "held_out": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                      for k, v in r.items()} for r in table.astype(object).to_dict("records")],
        "policy": policy_paths(run.out), "reward": run.config.irpo.reward,
        "warm_start": run.config.warmstart.queries > 0})
    return row


def policy_paths(run_dir: str | os.PathLike) -> dict:
    """The newest policy of an IRPO run folder as {"checkpoint": model folder or None, "adapter":
    adapter folder or None}: the mechanisms.llm_auction_checkpoint / _adapter settings."""
    run_dir = Path(run_dir)
    warm = _read_json(run_dir / "epoch-0" / "warmstart.json", {})
    checkpoint = str(run_dir / warm["policy"]) if warm.get("policy") else None
    epochs = sorted((int(p.name.split("-")[1]) for p in run_dir.glob("epoch-*")
                     if p.name.split("-")[1].isdigit()), reverse=True)
    for t in epochs:
        info = _read_json(run_dir / f"epoch-{t}" / "dpo.json", {})
        if info.get("adapter"):
            path = str(run_dir / info["adapter"])
            if (Path(path) / "adapter_config.json").is_file():
                return {"checkpoint": checkpoint, "adapter": path}
            return {"checkpoint": path, "adapter": None}  # full fine-tuning saved a model
    return {"checkpoint": checkpoint, "adapter": None}


def resolve_policy(path: str | os.PathLike) -> dict:
    """What `--checkpoint PATH` means: an IRPO run folder (its newest policy), an adapter folder
    (inside an IRPO run: on top of that run's warm-started model), or a model folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path}: no such folder; give an IRPO run folder, "
                                "an adapter folder (epoch-N/adapter) or a model folder")
    if (path / STATE).is_file():
        return policy_paths(path)
    if (path / "adapter_config.json").is_file():
        run_dir = path.parent.parent
        base = policy_paths(run_dir)["checkpoint"] if (run_dir / STATE).is_file() else None
        return {"checkpoint": base, "adapter": str(path)}
    return {"checkpoint": str(path), "adapter": None}


# ------------------------------------------------------------------------------------------------
# Setup and the loop


def _train_auctions(config: RunConfig, data: Path, retriever, catalog, n: int,
                    stream: int = _PICK) -> list:
    """`n` training-split queries (all of them when fewer), drawn by the seed stream `stream`, with
    their retrieved candidates and placeholder bids."""
    from llmauction_sim.data import load_dataset
    from llmauction_sim.domain.users import profiles_from_frame
    from llmauction_sim.mechanisms import AuctionRequest

    profiles, queries = load_dataset(data)
    train = queries[queries["split"] == "train"]
    if train.empty:
        raise ValueError(f"{data} has no training queries; build more profiles")
    pick = np.random.default_rng([config.seed, stream])
    n = min(n, len(train))
    train = train.iloc[np.sort(pick.choice(len(train), size=n, replace=False))]
    by_user = {p.user_id: p for p in profiles_from_frame(profiles)}
    users = [by_user[u] for u in train["user_id"]]
    texts = list(train["query"])
    return [AuctionRequest(qid, user, text, tuple(cands), {ad.id: 0.0 for ad in cands})
            for qid, user, text, cands in zip(train["query_id"], users, texts,
                                              retriever.retrieve(users, texts))]


def check_lengths(config: RunConfig, tokenizer, requests) -> None:
    """Refuse a `dpo.max_length` that would cut answers: the longest prompt plus
    `ad_sampling.max_new_tokens` must fit, or DPO and the warm start train on truncated answers."""
    if not requests:
        return
    longest = max(len(tokenizer(tokenizer.apply_chat_template(p, tokenize=False,
                                                              add_generation_prompt=True),
                                add_special_tokens=False)["input_ids"])
                  for p in _prompts(config, requests))
    need = longest + config.ad_sampling.max_new_tokens
    if need > config.dpo.max_length:
        raise ValueError(
            f"dpo.max_length = {config.dpo.max_length} is too short: the longest training prompt "
            f"has {longest} tokens and answers reach ad_sampling.max_new_tokens = "
            f"{config.ad_sampling.max_new_tokens}, so answers would be cut; set "
            f"dpo.max_length >= {need} (or fewer retrieval.num_candidates / max_new_tokens)")


def ensure_data(config: RunConfig, out: Path, data) -> Path:
    """`data` when given, else a build in OUT/data big enough for the train and test queries."""
    from llmauction_sim.data import build_dataset

    if data is not None:
        return Path(data)
    folder = out / "data"
    if not (folder / "queries.parquet").is_file():
        frac = config.data.test_fraction
        per = config.data.queries_per_profile
        need = max(config.irpo.test_queries / max(frac, 1e-9),
                   config.irpo.train_queries / max(1 - frac, 1e-9))
        profiles = min(config.data.profiles, max(2, math.ceil(need / per) + 1))
        build_dataset(config.with_overrides([f"data.profiles={profiles}"]), folder,
                      progress=False)
    return folder


def _setup(config: RunConfig, out: Path, progress: bool, data, resources: dict) -> IrpoRun:
    from llmauction_sim.clicks.base import make_judge
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder
    from llmauction_sim.lm.hf import TransformersLM, load_trainable

    unknown = set(resources) - {"model", "tokenizer", "ad_lm", "judge", "retriever", "catalog",
                                "pctr_encoder", "make_lm", "start_engine"}
    if unknown:
        raise TypeError(f"run_irpo got unknown resources {sorted(unknown)}")
    catalog = resources.get("catalog") or load_catalog(config.data.catalog)
    retriever = resources.get("retriever") or CandidateRetriever(
        catalog, load_encoder(config.retrieval.encoder), config.retrieval.num_candidates,
        config.retrieval.profile_weight)
    judge = resources.get("judge") or make_judge(config.clicks.judge, config,
                                                 encoder=retriever.encoder, catalog=catalog)
    model, tokenizer = resources.get("model"), resources.get("tokenizer")
    if model is None and resources.get("ad_lm") is not None:
        # Training changes the model in place; the caller's generator keeps its own weights.
        model, tokenizer = copy.deepcopy(resources["ad_lm"].model), resources["ad_lm"].tokenizer
    start_adapter = None
    if model is None:
        start = _start_config(config)
        model, tokenizer = load_trainable(start)
        start_adapter = start.adapter

    def default_lm(m, tok):
        return TransformersLM(m, tok, name=config.ad_llm.name,
                              max_batch_size=config.ad_llm.max_batch_size, seed=config.seed,
                              cpu_kernels=config.ad_llm.cpu_kernels)

    make_lm = resources.get("make_lm")
    if make_lm is None and config.ad_llm.backend == "vllm":
        # Collect, sample and evaluate generate on the engine; DPO trains the HF policy, whose
        # merged weights the engine reloads from OUT/policy-engine after every change.
        from llmauction_sim.learning.policy_engine import EnginePolicy, start_vllm_engine

        make_lm = EnginePolicy(out / ENGINE_POLICY,
                               resources.get("start_engine") or start_vllm_engine(config))
    make_lm = make_lm or default_lm
    data_dir = ensure_data(config, out, data)
    train = _train_auctions(config, data_dir, retriever, catalog, config.irpo.train_queries)
    check_lengths(config, tokenizer, train)
    run = IrpoRun(config, out, data_dir, train, catalog, retriever, judge, tokenizer, model,
                  make_lm(model, tokenizer), make_lm, resources.get("pctr_encoder"),
                  base_model=model, progress=progress, start_adapter=start_adapter)
    return run


def _position(state: dict | None) -> tuple[int, int]:
    """(epoch, phase index) of the last completed phase; (-1, -1) when none."""
    if not state:
        return (-1, -1)
    return (int(state["epoch"]), PHASES.index(state["phase"]))


def open_irpo(config: RunConfig, out: str | os.PathLike, *, resume: bool = False,
              progress: bool = True, data: str | os.PathLike | None = None,
              **resources) -> IrpoRun:
    """Set up (or, with `resume=True`, reopen) the IRPO run in `out` without running a phase:
    the policy is the starting one, or the newest saved one when resuming. See `run_irpo`."""
    from llmauction_sim.runfolder import acquire

    out = Path(out)
    folder = acquire(out, "irpo", inputs={"data": data}, resume=resume)
    try:
        return _open(folder, config, out, resume, progress, data, resources)
    except BaseException:
        folder.close()
        raise


def _open(folder, config: RunConfig, out: Path, resume: bool, progress: bool, data,
          resources: dict) -> IrpoRun:
    state_path = out / STATE
    state = _read_json(state_path) if resume else None
    if not resume and state_path.exists():
        raise FileExistsError(f"{out} already holds an IRPO run ({STATE}); pass resume=True to "
                              "continue it or choose an empty folder")
    run = _setup(config, out, progress, data, resources)
    folder.input("data", run.data)
    _write_json(out / "config.json", config.to_dict())  # the run has started
    folder.started(config)
    run.folder = folder
    run.done = done = _position(state)
    run.seconds = dict((state or {}).get("seconds", {}))
    run.memo = MemoLog(run.retriever, run.judge, run.pctr_encoder)
    for t in range(done[0] + 1):
        for i, phase in enumerate(PHASES):
            if (t, i) <= done:
                run.memo.load(out / f"epoch-{t}" / f"encoder-{phase}.npz")
    if done >= (0, PHASES.index("warmstart")):
        restore_warmstart(run)
    if done >= (1, 0):
        last_dpo = done[0] if done[1] >= PHASES.index("dpo") else done[0] - 1
        restore_policy(run, last_dpo)
    return run


def advance(run: IrpoRun, through: int) -> None:
    """Run every phase not yet completed up to the end of epoch `through` (0: the warm start and
    the starting policy's evaluation)."""
    config, done = run.config, run.done
    if (config.warmstart.queries or run.start_adapter) and \
            done < (0, PHASES.index("warmstart")):
        start = time.perf_counter()
        run.say(f"epoch 0: format warm start on {config.warmstart.queries} training auctions"
                if config.warmstart.queries else "epoch 0: saving the starting policy")
        warmstart_phase(run)
        run.finish(0, "warmstart", time.perf_counter() - start)
    if done < (0, PHASES.index("evaluate")):
        start = time.perf_counter()
        run.say("epoch 0: evaluating the starting policy")
        evaluate_phase(run, 0, 0.0)
        run.finish(0, "evaluate", time.perf_counter() - start)
    for t in range(1, through + 1):
        values: dict[str, Any] = {}
        for i, phase in enumerate(PHASES):
            if phase == "warmstart":
                continue  # epoch 0 only
            if (t, i) <= done:
                if phase == "collect":
                    continue  # read again by the pCTR phase when it needs it
                if phase == "pctr" and not (t, PHASES.index("sample")) <= done:
                    values["pctr"] = load_pctr(run, t)
                elif phase == "sample" and not (t, PHASES.index("pairs")) <= done:
                    values["sample"] = load_sample(run, t)
                elif phase == "pairs" and not (t, PHASES.index("dpo")) <= done:
                    values["pairs"] = load_pairs(run, t)
                continue
            run.say(f"epoch {t}: {phase}")
            start = time.perf_counter()
            if phase == "collect":
                collect_phase(run, t)
            elif phase == "pctr":
                values["pctr"] = pctr_phase(run, t)
            elif phase == "sample":
                values["sample"] = sample_phase(run, t, values["pctr"])
            elif phase == "pairs":
                values["pairs"] = pairs_phase(run, t, values["sample"])
            elif phase == "dpo":
                dpo_phase(run, t, values["pairs"])
            else:
                evaluate_phase(run, t, run.seconds.get(str(t), 0.0))
            run.finish(t, phase, time.perf_counter() - start)


def run_irpo(config: RunConfig, out: str | os.PathLike, *, resume: bool = False,
             progress: bool = True, data: str | os.PathLike | None = None,
             **resources) -> pd.DataFrame:
    """Run `config.irpo.epochs` IRPO epochs into `out`; return the epochs table (epoch 0 = the
    starting policy). `resume=True` continues after the last completed phase in OUT/state.json.

    Resources (all optional): ``model`` and ``tokenizer`` (the HF policy, trained in place;
    default: a fresh load of ``config.ad_llm``), ``ad_lm`` (a `TransformersLM` whose model is
    copied and tokenizer used),
    ``judge`` (click judge), ``retriever``, ``catalog``, ``pctr_encoder`` (encoder of the pCTR
    model), ``make_lm(model, tokenizer)`` (wraps the policy for generation; default
    `TransformersLM`, or with ``ad_llm.backend = "vllm"`` an engine over OUT/policy-engine that
    reloads the weights after every policy change), ``start_engine(folder)`` (that engine's
    loader; default vLLM). ``data`` is a `data build` folder (default: a small build in OUT/data).
    """
    run = open_irpo(config, out, resume=resume, progress=progress, data=data, **resources)
    try:
        advance(run, config.irpo.epochs)
        run.folder.finished()
    finally:
        run.close()
    return pd.read_parquet(Path(out) / EPOCHS)
