"""Fingerprints of `simulate`, `evaluate`, `equilibrium` (classic and LLM market) and `irpo` on
a tiny setting: the sha256 of each run's logs (queries, rounds, epochs, samples; bytes, or the
table without its wall-clock columns) and of its summary.json without wall-clock fields and with
the scratch folder's path replaced.

Run it at two commits and compare the files: a refactoring that keeps behaviour leaves every
fingerprint unchanged (same seeds, same bytes). About 5 minutes on 2 CPU cores.

    python experiments/fingerprint_runs.py --work /tmp/fp-before --out before.json
    python experiments/fingerprint_runs.py --work /tmp/fp-after --out after.json
    diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmauction_sim.cli import main as cli  # noqa: E402

TINY = ["--set", "ad_sampling.max_new_tokens=24", "--set", "market.split=all"]
IRPO_TINY = ["--set", "ad_sampling.max_new_tokens=24", "--set", "irpo.samples_per_query=2",
             "--set", "irpo.candidates_per_prompt=2", "--set", "irpo.kl_samples=2",
             "--set", "warmstart.queries=2", "--set", "warmstart.epochs=1",
             "--set", "dpo.max_steps=1", "--set", "dpo.batch_size=1", "--set", "pctr.epochs=1",
             "--set", "irpo.delta_th=0"]
COMMANDS = {
    "simulate": ["simulate", "--steps", "2", "--queries-per-step", "3", "--seed", "5", *TINY],
    "evaluate": ["evaluate", "--mechanism", "llm_auction,llm_auction_tilted,mosaic",
                 "--test-queries", "3", "--set", "mechanisms.mosaic.samples=2", *TINY],
    "equilibrium_classic": ["equilibrium", "--mechanism", "gsp", "--rounds", "20",
                            "--auctions-per-round", "200"],
    "equilibrium_market": ["equilibrium", "--mechanism", "llm_auction", "--rounds", "2",
                           "--advertisers", "vm:2,um:2", "--set", "market.queries_per_step=2",
                           "--set", "market.surrogate_rounds=3", *TINY],
    "irpo": ["irpo", "--epochs", "1", "--train-queries", "2", "--test-queries", "2",
             *IRPO_TINY],
}
_CLOCK = ("seconds", "time", "elapsed", "started", "finished", "duration")


def _clock(key: str) -> bool:
    return any(word in key.lower() for word in _CLOCK)


def _strip_clock(value, work: str):
    """`value` without wall-clock fields, the scratch folder's path replaced by a placeholder."""
    if isinstance(value, dict):
        return {k: _strip_clock(v, work) for k, v in value.items() if not _clock(k)}
    if isinstance(value, list):
        return [_strip_clock(v, work) for v in value]
    if isinstance(value, str):
        return value.replace(work, "<work>")
    return value


def fingerprint(folder: Path, work: Path) -> dict[str, str]:
    """sha256 of every log parquet under `folder` (its bytes; without its wall-clock columns
    where it has any) and of every summary.json (without wall-clock fields or `work`'s path)."""
    prints = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.name in ("queries.parquet", "rounds.parquet", "market.parquet",
                         "epochs.parquet", "samples.parquet"):
            frame = pd.read_parquet(path)
            clock = [c for c in frame.columns if _clock(str(c))]
            if clock:
                frame = frame.drop(columns=clock)
                data = frame.to_json(orient="split", double_precision=15).encode()
            else:
                data = path.read_bytes()
            prints[key] = hashlib.sha256(data).hexdigest()
        elif path.name == "summary.json":
            text = json.dumps(_strip_clock(json.loads(path.read_text()), str(work.resolve())),
                              sort_keys=True)
            prints[key] = hashlib.sha256(text.encode()).hexdigest()
    return prints


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (replaced)")
    parser.add_argument("--out", type=Path, required=True, help="the fingerprints (JSON)")
    parser.add_argument("--only", nargs="*", choices=sorted(COMMANDS), default=None,
                        help="run these only, adding their fingerprints to an existing --out")
    parser.add_argument("--rehash", action="store_true",
                        help="fingerprint the runs already in --work without running them")
    args = parser.parse_args(argv)

    if args.rehash:
        prints = {name: fingerprint(args.work / name, args.work) for name in args.only or COMMANDS}
        args.out.write_text(json.dumps(prints, indent=2, sort_keys=True) + "\n")
        return 0
    shutil.rmtree(args.work, ignore_errors=True)
    data = args.work / "data"
    if cli(["data", "build", "--out", str(data), "--profiles", "8", "--quiet",
            "--writer", "template"]) != 0:
        return 1
    prints = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    for name in args.only or COMMANDS:
        out = args.work / name
        extra = [] if name.startswith("equilibrium") else ["--data", str(data)]
        if cli([*COMMANDS[name], "--out", str(out), "--quiet", *extra]) != 0:
            print(f"{name} failed", file=sys.stderr)
            return 1
        prints[name] = fingerprint(out, args.work)
        args.out.write_text(json.dumps(prints, indent=2, sort_keys=True) + "\n")
    print(json.dumps(prints, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
