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

With ``resume=True`` the run restarts at the phase after the last completed one; completed
phases' outputs are loaded, not recomputed, and the policy is rebuilt from the newest saved
adapter. Each phase also saves the sentence vectors it computed (``epoch-{t}/encoder-{phase}.npz``),
which a resume reuses: a text encoded again in another batch would differ in its last bits.
OUT/run.json and OUT/.lock: see runfolder.py.

This module sets a run up and runs the table of phases (`START`, `EPOCH`, `advance`); the phases
themselves are in irpo_phases.py, what they share in irpo_run.py, the folder's names and policy
resolution (``--checkpoint``) in irpo_folder.py.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

import llmauction_sim.lm.hf as hf
from llmauction_sim.clicks.base import make_judge
from llmauction_sim.config import RunConfig
from llmauction_sim.data import build_just_enough
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.learning.irpo_folder import (  # noqa: F401  (the run folder's names, re-exported)
    ENGINE_POLICY,
    EPOCHS,
    MARKET_LOG,
    PHASES,
    STATE,
    policy_paths,
    read_json,
    resolve_policy,
)
from llmauction_sim.learning.irpo_phases import (  # noqa: F401  (looked up here at call time)
    collect_phase,
    dpo_phase,
    evaluate_phase,
    load_collect,
    load_pairs,
    load_pctr,
    load_sample,
    pairs_phase,
    pctr_phase,
    restore_policy,
    restore_warmstart,
    sample_phase,
    warmstart_phase,
)
from llmauction_sim.learning.irpo_run import (  # noqa: F401
    IrpoRun,
    epoch_requests,
    market_log,
    prompts,
    train_auctions,
)
from llmauction_sim.learning.policy_engine import EnginePolicy, start_vllm_engine
from llmauction_sim.lm.encoder import CandidateRetriever, MemoLog, load_encoder
from llmauction_sim.manifest import write_json
from llmauction_sim.mechanisms.base import policy_config
from llmauction_sim.runfolder import acquire

# ------------------------------------------------------------------------------------------------
# Setup


def check_lengths(config: RunConfig, tokenizer, requests) -> None:
    """Refuse a `dpo.max_length` that would cut answers: the longest prompt plus
    `ad_sampling.max_new_tokens` must fit, or DPO and the warm start train on truncated answers."""
    if not requests:
        return
    longest = max(len(tokenizer(tokenizer.apply_chat_template(p, tokenize=False,
                                                              add_generation_prompt=True),
                                add_special_tokens=False)["input_ids"])
                  for p in prompts(config, requests))
    need = longest + config.ad_sampling.max_new_tokens
    if need > config.dpo.max_length:
        raise ValueError(
            f"dpo.max_length = {config.dpo.max_length} is too short: the longest training prompt "
            f"has {longest} tokens and answers reach ad_sampling.max_new_tokens = "
            f"{config.ad_sampling.max_new_tokens}, so answers would be cut; set "
            f"dpo.max_length >= {need} (or fewer retrieval.num_candidates / max_new_tokens)")


def ensure_data(config: RunConfig, out: Path, data) -> Path:
    """`data` when given, else a build in OUT/data big enough for the train and test queries."""
    if data is not None:
        return Path(data)
    folder = out / "data"
    if not (folder / "queries.parquet").is_file():
        frac = config.data.test_fraction
        need = max(config.irpo.test_queries / max(frac, 1e-9),
                   config.irpo.train_queries / max(1 - frac, 1e-9))
        build_just_enough(config, folder, need / config.data.queries_per_profile, spare=1)
    return folder


def _setup(config: RunConfig, out: Path, progress: bool, data, resources: dict) -> IrpoRun:
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
        model, tokenizer = hf.load_trainable(start)
        start_adapter = start.adapter

    def default_lm(m, tok):
        return hf.TransformersLM(m, tok, name=config.ad_llm.name,
                                 max_batch_size=config.ad_llm.max_batch_size, seed=config.seed,
                                 cpu_kernels=config.ad_llm.cpu_kernels)

    make_lm = resources.get("make_lm")
    if make_lm is None and config.ad_llm.backend == "vllm":
        # Collect, sample and evaluate generate on the engine; DPO trains the HF policy, whose
        # merged weights the engine reloads from OUT/policy-engine after every change.
        make_lm = EnginePolicy(out / ENGINE_POLICY,
                               resources.get("start_engine") or start_vllm_engine(config))
    make_lm = make_lm or default_lm
    data_dir = ensure_data(config, out, data)
    train = train_auctions(config, data_dir, retriever, catalog, config.irpo.train_queries)
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
    state = read_json(state_path) if resume else None
    if not resume and state_path.exists():
        raise FileExistsError(f"{out} already holds an IRPO run ({STATE}); pass resume=True to "
                              "continue it or choose an empty folder")
    run = _setup(config, out, progress, data, resources)
    folder.input("data", run.data)
    write_json(out / "config.json", config.to_dict())  # the run has started
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


def _start_config(config: RunConfig):
    """The ModelConfig of the run's starting policy: the plain Ad-LLM when the run trains its own
    warm start, else pi_0 (`mechanisms.policy_adapter` on ad_llm)."""
    return config.ad_llm if config.warmstart.queries else policy_config(config)


# ------------------------------------------------------------------------------------------------
# The loop: a table of phases


@dataclass(frozen=True)
class Phase:
    """One step of an epoch. `run(run, t, values)` returns what later phases of the epoch read
    as values[name]; `load(run, t)` reads that back from a completed phase when a resumed run
    still needs it (the next phase is not done yet)."""
    name: str
    run: Callable[[IrpoRun, int, dict], Any]
    load: Callable[[IrpoRun, int], Any] | None = None
    wanted: Callable[[IrpoRun], bool] = lambda run: True
    describe: Callable[[IrpoRun, int], str] | None = None


# Phases are looked up in this module when they run, so a caller (or a test) can replace one.
START = (  # epoch 0
    Phase("warmstart", lambda run, t, v: warmstart_phase(run),
          wanted=lambda run: bool(run.config.warmstart.queries or run.start_adapter),
          describe=lambda run, t: (f"epoch 0: format warm start on {run.config.warmstart.queries}"
                                   " training auctions" if run.config.warmstart.queries
                                   else "epoch 0: saving the starting policy")),
    Phase("evaluate", lambda run, t, v: evaluate_phase(run, 0, 0.0),
          describe=lambda run, t: "epoch 0: evaluating the starting policy"),
)
EPOCH = (  # epochs 1, 2, ...
    Phase("collect", lambda run, t, v: collect_phase(run, t)),
    Phase("pctr", lambda run, t, v: pctr_phase(run, t), lambda run, t: load_pctr(run, t)),
    Phase("sample", lambda run, t, v: sample_phase(run, t, v["pctr"]),
          lambda run, t: load_sample(run, t)),
    Phase("pairs", lambda run, t, v: pairs_phase(run, t, v["sample"]),
          lambda run, t: load_pairs(run, t)),
    Phase("dpo", lambda run, t, v: dpo_phase(run, t, v["pairs"])),
    Phase("evaluate", lambda run, t, v: evaluate_phase(run, t, run.seconds.get(str(t), 0.0))),
)
assert tuple(p.name for p in (START[0], *EPOCH)) == PHASES


def advance(run: IrpoRun, through: int) -> None:
    """Run every phase not yet completed up to the end of epoch `through` (0: the warm start and
    the starting policy's evaluation)."""
    done = run.done
    for t in range(through + 1):
        phases = START if t == 0 else EPOCH
        values: dict[str, Any] = {}
        for k, phase in enumerate(phases):
            if (t, PHASES.index(phase.name)) <= done:
                later = phases[k + 1:]
                if phase.load is not None and later and \
                        not (t, PHASES.index(later[0].name)) <= done:
                    values[phase.name] = phase.load(run, t)
                continue
            if not phase.wanted(run):
                continue
            run.say(phase.describe(run, t) if phase.describe else f"epoch {t}: {phase.name}")
            start = time.perf_counter()
            values[phase.name] = phase.run(run, t, values)
            run.finish(t, phase.name, time.perf_counter() - start)


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
