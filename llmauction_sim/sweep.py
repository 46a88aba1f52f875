"""`llmauction sweep`: many runs (a grid or a list of configs, times seeds), each in its own
folder, gathered into one summary table.

A sweep file (TOML)::

    kind = "simulate"            # or "equilibrium" (classic auctions, numpy only)
    seeds = [0, 1, 2]
    max_workers = 2              # process executor
    [ray]                        # ray executor: address "" starts a local instance
    address = ""
    num_cpus = 2
    [base]                       # config fields for every run (the command's config layout)
    market = { steps = 5, queries_per_step = 8 }
    [grid]                       # dotted field -> values; every combination is a run
    "market.mechanism" = ["pretrained", "pregen_gsp"]
    # or, instead of [grid], a list of runs:
    # [[runs]]
    # "market.mechanism" = "mosaic"

Each run writes DIR/runs/<run_id>/ (its own run folder with summary.json). DIR/summary.parquet has
one row per run: run_id, seed, the overrides, status ("ok" or "failed" with the error) and the
run's summary.json scalars. A failed run is recorded and does not stop the others; re-running a
sweep skips runs that have a summary.json.
"""

from __future__ import annotations

import itertools
import json
import os
import tomllib
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from llmauction_sim.config import ConfigError
from llmauction_sim.manifest import write_json

KINDS = ("simulate", "equilibrium")
EXECUTORS = ("local", "process", "ray")


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    kind: str
    base: dict
    overrides: tuple[str, ...]
    seed: int


@dataclass
class Sweep:
    kind: str
    runs: list[RunSpec]
    max_workers: int = 2
    ray: dict = field(default_factory=dict)


def _override_value(value: Any) -> str:
    """A value as `--set section.field=VALUE` takes it (the config coerces it by field type)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and check a sweep file; errors name the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep file {str(path)!r} is not valid TOML: {exc}") from None
    known = {"kind", "seeds", "max_workers", "ray", "base", "grid", "runs"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"sweep file: unknown keys {unknown}; use {sorted(known)}")
    kind = data.get("kind", "simulate")
    if kind not in KINDS:
        raise ConfigError(f"sweep file: kind = {kind!r}; use one of {', '.join(KINDS)}")
    seeds = data.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError("sweep file: seeds must be a non-empty list of integers >= 0")
    if "grid" in data and "runs" in data:
        raise ConfigError("sweep file: give either [grid] or [[runs]], not both")
    if "runs" in data:
        variants = [dict(r) for r in data["runs"]]
    else:
        grid = data.get("grid", {})
        bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
        if bad:
            raise ConfigError(f"sweep file: grid values must be non-empty lists ({bad})")
        keys = list(grid)
        variants = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
    runs = []
    for i, variant in enumerate(variants):
        overrides = tuple(f"{k}={_override_value(v)}" for k, v in variant.items())
        for seed in seeds:
            runs.append(RunSpec(f"r{i:03d}-seed{seed}", kind, data.get("base", {}), overrides,
                                seed))
    return Sweep(kind, runs, int(data.get("max_workers", 2)), dict(data.get("ray", {})))


def _summary_scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))
            or v is None}


def execute_run(spec: RunSpec, root: str) -> dict:
    """Run one sweep entry (skipped when its summary exists); never raises."""
    folder = Path(root) / "runs" / spec.run_id
    row = {"run_id": spec.run_id, "seed": spec.seed, "overrides": json.dumps(spec.overrides)}
    done = folder / "summary.json"
    try:
        if not done.is_file():
            overrides = [*spec.overrides, f"seed={spec.seed}"]
            if spec.kind == "simulate":
                from llmauction_sim.config import RunConfig
                from llmauction_sim.market import simulate

                config = RunConfig.from_dict(spec.base).with_overrides(overrides)
                simulate(config, folder, resume=(folder / "config.json").is_file(),
                         progress=False)
            else:
                from llmauction_sim.equilibrium import EquilibriumConfig, run_from_config

                run_from_config(EquilibriumConfig.from_dict(spec.base).with_overrides(overrides),
                                out=folder)
        (folder / "error.txt").unlink(missing_ok=True)
        return {**row, "status": "ok", "error": None,
                **_summary_scalars(json.loads(done.read_text()))}
    except Exception as exc:  # one failed run must not lose the others
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(traceback.format_exc())
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # workers share the cores
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _run_local(sweep: Sweep, root: str) -> list[dict]:
    return [execute_run(spec, root) for spec in sweep.runs]


def _run_process(sweep: Sweep, root: str) -> list[dict]:
    with ProcessPoolExecutor(max_workers=sweep.max_workers, mp_context=get_context("spawn"),
                             initializer=_one_thread) as pool:
        return list(pool.map(execute_run, sweep.runs, [root] * len(sweep.runs)))


def _run_ray(sweep: Sweep, root: str) -> list[dict]:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the ray executor needs Ray: pip install 'llmauction-sim[dist]'") \
            from exc
    started = not ray.is_initialized()
    if started:
        address = sweep.ray.get("address") or None
        kwargs = {} if address else {"num_cpus": int(sweep.ray.get("num_cpus", 2))}
        ray.init(address=address, include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        remote = ray.remote(num_cpus=1)(execute_run)
        return ray.get([remote.remote(spec, root) for spec in sweep.runs])
    finally:
        if started:
            ray.shutdown()


_EXECUTORS: dict[str, Callable[[Sweep, str], list[dict]]] = {
    "local": _run_local, "process": _run_process, "ray": _run_ray}


def run_sweep(path: str | Path, out: str | Path, executor: str = "process") -> pd.DataFrame:
    """Run every entry of the sweep file; write and return DIR/summary.parquet."""
    if executor not in _EXECUTORS:
        raise ConfigError(f"executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    sweep = load_sweep(path)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", {"file": str(path), "kind": sweep.kind,
                                    "runs": [spec.run_id for spec in sweep.runs]})
    rows = _EXECUTORS[executor](sweep, str(out))
    table = pd.DataFrame(rows).sort_values("run_id", ignore_index=True)
    tmp = out / ".summary.parquet.tmp"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out / "summary.parquet")
    return table


def describe(table: pd.DataFrame, columns: Sequence[str] = ()) -> str:
    ok = int((table["status"] == "ok").sum())
    lines = [f"{ok} of {len(table)} runs ok"]
    for _, row in table[table["status"] == "failed"].iterrows():
        lines.append(f"  failed {row['run_id']}: {row['error']}")
    return "\n".join(lines)
