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

Each run writes DIR/runs/<run_id>/ (its own run folder with summary.json). The run id is
``seed<S>-<hash>``, the hash of the run's kind, base, overrides and seed, so a reordered or edited
grid never reports an old result under new settings. DIR/summary.parquet has one row per run, in
the sweep file's order: run_id, seed, the overrides, status ("ok" or "failed" with the error) and
the run's summary.json scalars. A failed run is recorded and does not stop the others; re-running
a sweep skips runs that finished and resumes a market run that was cut off.

The process executor starts its workers in process groups of their own and ends them when the
sweep ends, fails or is stopped (SIGINT, SIGTERM, SIGHUP); on Linux a worker also dies with the
sweep process if that is killed outright (SIGKILL).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import signal
import sys
import threading
import tomllib
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from llmauction_sim.config import ConfigError, RunConfig
from llmauction_sim.manifest import write_json
from llmauction_sim.runfolder import atomic_parquet, open_run_folder

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


def run_key(kind: str, base: dict, overrides: Sequence[str], seed: int) -> str:
    """A run's folder name from what it runs (not its position in the grid)."""
    fields = dict(sorted(o.split("=", 1) for o in overrides))
    text = json.dumps({"kind": kind, "base": base, "overrides": fields, "seed": seed},
                      sort_keys=True, default=str)
    return f"seed{seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


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
    base = data.get("base", {})
    for variant in variants:
        overrides = tuple(f"{k}={_override_value(v)}" for k, v in variant.items())
        for seed in seeds:
            runs.append(RunSpec(run_key(kind, base, overrides, seed), kind, base, overrides,
                                seed))
    if len({r.run_id for r in runs}) < len(runs):
        raise ConfigError("sweep file: two runs have the same settings and seed; list each "
                          "combination once")
    return Sweep(kind, runs, int(data.get("max_workers", 2)), dict(data.get("ray", {})))


def _summary_scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))
            or v is None}


def _finished(folder: Path) -> bool:
    if not (folder / "summary.json").is_file():
        return False
    try:
        record = json.loads((folder / "run.json").read_text())
    except FileNotFoundError:
        return True  # a run folder from before run.json
    except (OSError, ValueError):
        return False
    return record.get("state") == "finished"


def execute_run(spec: RunSpec, root: str) -> dict:
    """Run one sweep entry (skipped when it finished); never raises."""
    folder = Path(root) / "runs" / spec.run_id
    row = {"run_id": spec.run_id, "seed": spec.seed, "overrides": json.dumps(spec.overrides)}
    try:
        if not _finished(folder):
            overrides = [*spec.overrides, f"seed={spec.seed}"]
            if spec.kind == "simulate":
                from llmauction_sim.market import simulate

                config = RunConfig.from_dict(spec.base).with_overrides(overrides)
                simulate(config, folder, resume=(folder / "config.json").is_file(),
                         progress=False)
            else:
                from llmauction_sim.classic.equilibrium import run_classic_equilibrium

                config = RunConfig.from_dict(spec.base).with_overrides(overrides)
                run_classic_equilibrium(config, folder,
                                        resume=(folder / "config.json").is_file())
        (folder / "error.txt").unlink(missing_ok=True)
        return {**row, "status": "ok", "error": None,
                **_summary_scalars(json.loads((folder / "summary.json").read_text()))}
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


def _worker_start(parent: int) -> None:
    """A process-executor worker: its own process group (ended as a whole with the sweep) and,
    on Linux, killed by the kernel when the sweep process dies, even by SIGKILL."""
    os.setpgid(0, 0)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the sweep died before the line above
        os._exit(1)
    _one_thread()


def _end_workers(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _run_local(sweep: Sweep, root: str) -> list[dict]:
    return [execute_run(spec, root) for spec in sweep.runs]


def _run_process(sweep: Sweep, root: str) -> list[dict]:
    pool = ProcessPoolExecutor(max_workers=sweep.max_workers, mp_context=get_context("spawn"),
                               initializer=_worker_start, initargs=(os.getpid(),))
    ended = False
    try:
        futures = [pool.submit(execute_run, spec, root) for spec in sweep.runs]
        rows = [f.result() for f in futures]
        ended = True
        return rows
    finally:
        if not ended:  # stopped or failed: no worker may go on writing beside a rerun
            _end_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)


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
    with open_run_folder(out, "sweep") as folder, _stop_signals_raise():
        folder.started({"file": str(path), "runs": [spec.run_id for spec in sweep.runs]})
        write_json(out / "sweep.json", {
            "file": str(path), "kind": sweep.kind,
            "runs": [{"run_id": spec.run_id, "seed": spec.seed,
                      "overrides": list(spec.overrides)} for spec in sweep.runs]})
        rows = _EXECUTORS[executor](sweep, str(out))
        table = pd.DataFrame(rows)
        atomic_parquet(table, out / "summary.parquet")
        folder.finished()
    return table


@contextlib.contextmanager
def _stop_signals_raise():
    """SIGTERM and SIGHUP stop the sweep like Ctrl-C, so the executor's cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def describe(table: pd.DataFrame, columns: Sequence[str] = ()) -> str:
    ok = int((table["status"] == "ok").sum())
    lines = [f"{ok} of {len(table)} runs ok"]
    for _, row in table[table["status"] == "failed"].iterrows():
        lines.append(f"  failed {row['run_id']}: {row['error']}")
    return "\n".join(lines)
