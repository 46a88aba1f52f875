"""The IRPO run folder: its file names, atomic writes, and which policy it holds.

`policy_paths` and `resolve_policy` are what ``--checkpoint PATH`` means to the CLI and the
experiments; they read the folder's JSON records only (no model is loaded here).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmauction_sim.runfolder import temp_path

#: Every phase in the order it runs; OUT/state.json names the last completed one (warmstart only
#: in epoch 0, whose other phase is evaluate).
PHASES = ("warmstart", "collect", "pctr", "sample", "pairs", "dpo", "evaluate")
STATE = "state.json"
EPOCHS = "epochs.parquet"
MARKET_LOG = "market.parquet"  # epoch-t/: the market rounds epoch t trains on (market/joint.py)
ENGINE_POLICY = "policy-engine"  # the current policy's merged weights, read by a vLLM engine


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.is_file() else default


def replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A fresh temporary folder next to `final` that replaces it once the block succeeds."""
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    replace_dir(tmp, final)


def policy_paths(run_dir: str | os.PathLike) -> dict:
    """The newest policy of an IRPO run folder as {"checkpoint": model folder or None, "adapter":
    adapter folder or None}: the mechanisms.llm_auction.checkpoint / .adapter settings."""
    run_dir = Path(run_dir)
    warm = read_json(run_dir / "epoch-0" / "warmstart.json", {})
    checkpoint = str(run_dir / warm["policy"]) if warm.get("policy") else None
    epochs = sorted((int(p.name.split("-")[1]) for p in run_dir.glob("epoch-*")
                     if p.name.split("-")[1].isdigit()), reverse=True)
    for t in epochs:
        info = read_json(run_dir / f"epoch-{t}" / "dpo.json", {})
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
