"""What IRPO's phases share: the run (`IrpoRun`), its seed streams and its training auctions."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmauction_sim.config import RunConfig
from llmauction_sim.data import load_dataset
from llmauction_sim.domain.users import profiles_from_frame
from llmauction_sim.learning.irpo_folder import MARKET_LOG, PHASES, STATE
from llmauction_sim.lm.base import SamplingParams
from llmauction_sim.lm.devices import resolve_device
from llmauction_sim.lm.prompts import ad_llm_messages
from llmauction_sim.manifest import write_json
from llmauction_sim.rounds import as_allocations, auctions_for, logged_requests, with_uniform_bids
from llmauction_sim.tables import read_query_log


class Streams:
    """Independent seed streams, mixed with config.seed (and the epoch where there is one)."""

    PICK, BIDS, COLLECT, COLLECT_CLICKS, SAMPLE, SAMPLE_CLICKS = 31, 32, 33, 34, 35, 36
    WARM_PICK, WARM_BIDS, WARM_ANSWERS, WARM_INSERT, PAIRS, WARM_GATE = 37, 38, 39, 40, 41, 42


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
            self._profiles = {p.user_id: p for p in profiles_from_frame(load_dataset(self.data)[0])}
        return self._profiles[user_id]

    def finish(self, t: int, phase: str, elapsed: float) -> None:
        """Record phase `phase` of epoch t as completed (OUT/state.json)."""
        self.seconds[str(t)] = self.seconds.get(str(t), 0.0) + elapsed
        self.done = (t, PHASES.index(phase))
        if self.memo is not None:
            self.memo.save(self.epoch_dir(t) / f"encoder-{phase}.npz")
        write_json(self.out / STATE, {"epoch": t, "phase": phase, "seconds": self.seconds})


# ------------------------------------------------------------------------------------------------
# Training auctions


def train_auctions(config: RunConfig, data: Path, retriever, catalog, n: int,
                   stream: int = Streams.PICK) -> list:
    """`n` training-split queries (all of them when fewer), drawn by the seed stream `stream`, with
    their retrieved candidates and placeholder bids."""
    profiles, queries = load_dataset(data)
    train = queries[queries["split"] == "train"]
    if train.empty:
        raise ValueError(f"{data} has no training queries; build more profiles")
    pick = np.random.default_rng([config.seed, stream])
    n = min(n, len(train))
    train = train.iloc[np.sort(pick.choice(len(train), size=n, replace=False))]
    return auctions_for(profiles, train, retriever)


def with_bids(config: RunConfig, auctions, rng: np.random.Generator) -> list:
    """`auctions` with integer bids uniform over market.bid_low..bid_high drawn from `rng`."""
    return with_uniform_bids(auctions, config.market.bid_low, config.market.bid_high, rng)


def market_log(run: IrpoRun, t: int) -> pd.DataFrame | None:
    """The market rounds epoch t trains on (the `queries.parquet` rows of a market run), if any."""
    path = run.out / f"epoch-{t}" / MARKET_LOG
    return read_query_log(path) if path.is_file() else None


def epoch_requests(run: IrpoRun, t: int) -> list:
    """The training auctions of epoch t: the market's logged auctions with their bids when epoch t
    trains on a market; otherwise fixed queries and candidates with integer bids redrawn from a
    generator seeded by (seed, t)."""
    log = market_log(run, t)
    if log is None:
        return with_bids(run.config, run.train,
                         np.random.default_rng([run.config.seed, Streams.BIDS, t]))
    return logged_requests(log, run.profile, run.catalog)


def prompts(run_or_config, requests) -> list:
    """The Ad-LLM prompts of `requests` (`run_or_config`: an IrpoRun or its RunConfig)."""
    config = getattr(run_or_config, "config", run_or_config)
    return [ad_llm_messages(r.profile, r.query, r.candidates, r.bids, config.ad_prompt)
            for r in requests]


def generate(run: IrpoRun, requests, n: int, rng: np.random.Generator) -> list[list[str]]:
    """`n` answers of the policy per request, in one batched call (one seed per request)."""
    params = [SamplingParams.from_config(run.config.ad_sampling, n=n, seed=int(s))
              for s in rng.integers(0, 2**63, len(requests))]
    return [[c.text for c in row] for row in run.lm.generate(prompts(run, requests), params)]


def epoch_samples(run: IrpoRun, t: int, n: int, stream: int):
    """`n` answers of the policy per training auction of epoch t, flattened: (requests, answers
    read as allocations, sample index within its auction)."""
    requests = epoch_requests(run, t)
    samples = generate(run, requests, n, np.random.default_rng([run.config.seed, stream, t]))
    flat = [r for r, row in zip(requests, samples) for _ in row]
    return (flat, as_allocations(flat, [text for row in samples for text in row],
                                 run.config.penalty, run.catalog.ids),
            [k for row in samples for k in range(len(row))])
