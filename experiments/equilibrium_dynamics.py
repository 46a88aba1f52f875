"""Value and utility maximizers learning to bid: classic auctions vs the LLM market.

The same population (default vm:4,um:4) learns in five settings:

- ``first_price``, ``second_price``, ``gsp``: the vectorized classic auctions (`run_equilibrium`),
  values uniform per auction, one slot;
- ``llm_fixed``: the LLM market (`llm_auction`, first price per click) with a fixed Ad-LLM,
  N LLM rounds, each followed by S rounds on the allocation surrogate;
- ``llm_joint``: the same market with the Ad-LLM retrained by IRPO every K LLM rounds on those
  rounds' auctions, bids and clicks (``market.rounds_per_epoch``; market/joint.py).

Both LLM settings start from one format-warm-started policy (docs/irpo.md): ``--policy`` names a
model folder (e.g. runs/table2/irpo-pctr/epoch-0/policy); without it the warm start runs first.
Per setting and type: the final mean bid multiplier (bid / value), the convergence diagnostic
(mean absolute change of the multiplier per round over the last 10% of rounds), ROI, the ROI
violation rate and revenue. Writes docs/results/equilibrium_dynamics.{md,csv,png}. Every LLM run
resumes from --work.

    python experiments/equilibrium_dynamics.py --work runs/equilibrium-dynamics \
        [--policy DIR] [--data DIR] [--llm-rounds 10] [--rounds-per-epoch 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.tables import markdown_table  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
CLASSIC = ("first_price", "second_price", "gsp")
# The CPU budget (about half an hour on 2 cores with --policy); every value can be changed with
# --set. IRPO settings follow experiments/reproduce_table2.py.
CPU_SETTINGS = [
    "data.profiles=40", "ad_sampling.max_new_tokens=96", "market.queries_per_step=8",
    "market.surrogate_rounds=50", "irpo.candidates_per_prompt=5", "irpo.test_queries=16",
    "irpo.max_pairs=32", "dpo.learning_rate=2e-4", "irpo.kl_samples=0",
]


def log(text: str) -> None:
    print(f"[dynamics {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def warm_started_policy(config: RunConfig, work: Path, data) -> str:
    """The format warm start of `config` (run once under WORK/warmstart); its model folder."""
    from llmauction_sim.learning.irpo import STATE, advance, open_irpo, policy_paths

    folder = work / "warmstart"
    run = open_irpo(config, folder, resume=(folder / STATE).is_file(), data=data)
    advance(run, 0)
    return policy_paths(folder)["checkpoint"]


def run_seconds(folder: Path) -> float:
    """Compute time of an LLM setting over all its sessions: the market's rounds plus, in a
    joint run, the IRPO phases."""
    total = json.loads((folder / "market" / "manifest.json").read_text())["seconds"]
    state = folder / "irpo" / "state.json"
    if state.is_file():
        total += sum(json.loads(state.read_text())["seconds"].values())
    return float(total)


def summarize(setting: str, rounds: pd.DataFrame, revenue: float) -> list[dict]:
    """Per type: final multiplier, convergence, ROI (whole run and last 10% of rounds), violation
    rate (rounds: one row per round and advertiser, with type, multiplier, value, spend,
    roi_violated)."""
    last_round = rounds["round"].max()
    first = rounds["round"].min()
    window = max(1, (last_round - first + 1) // 10)
    tail = rounds[rounds["round"] > last_round - window]
    change = (rounds.sort_values("round").groupby("advertiser")["multiplier"].diff().abs())
    rounds = rounds.assign(change=change)
    out = []
    for kind, g in rounds.groupby("type"):
        t = tail[tail["type"] == kind]
        value, spend = g["value"].sum(), g["spend"].sum()
        out.append({"setting": setting, "type": kind, "rounds": int(last_round - first + 1),
                    "final_multiplier": float(t["multiplier"].mean()),
                    "bid_change_last_10pct": float(g.loc[t.index, "change"].mean()),
                    "roi": float(value / spend) if spend > 0 else np.nan,
                    "roi_last_10pct": float(t["value"].sum() / t["spend"].sum())
                    if t["spend"].sum() > 0 else np.nan,
                    "violation_rate": float(g.loc[g["spend"] > 0, "roi_violated"].mean())
                    if (g["spend"] > 0).any() else np.nan,
                    "revenue": revenue})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/equilibrium-dynamics"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--advertisers", default="vm:4,um:4")
    parser.add_argument("--policy", help="warm-started model folder (default: run the warm start)")
    parser.add_argument("--data", help="a `llmauction data build` folder (default: build one)")
    parser.add_argument("--classic-rounds", type=int, default=300)
    parser.add_argument("--auctions-per-round", type=int, default=1000)
    parser.add_argument("--llm-rounds", type=int, default=10)
    parser.add_argument("--rounds-per-epoch", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from llmauction_sim.classic.equilibrium import run_equilibrium
    from llmauction_sim.market.equilibrium import market_config, run_market_equilibrium

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    base = RunConfig(seed=args.seed).with_overrides(CPU_SETTINGS + args.set)
    data = args.data
    if data is None:
        from llmauction_sim.data import build_dataset

        data = args.work / "data"
        if not (data / "queries.parquet").is_file():
            build_dataset(base, data, progress=True)
    rows, curves = [], {}
    for mechanism in CLASSIC:
        result = run_equilibrium(mechanism, args.advertisers, rounds=args.classic_rounds,
                                 auctions_per_round=args.auctions_per_round, seed=args.seed)
        rows += summarize(mechanism, result.rounds, float(result.market["revenue"].sum()))
        curves[mechanism] = result.rounds
        log(f"{mechanism}: done")

    policy = args.policy or warm_started_policy(
        base.with_overrides(["warmstart.queries=64"]), args.work, data)
    llm = base.with_overrides([f"ad_llm.name={policy}", "warmstart.queries=0",
                               f"market.data={data}"])
    seconds = {}
    for setting, extra in (("llm_fixed", []),
                           ("llm_joint", [f"market.rounds_per_epoch={args.rounds_per_epoch}"])):
        config = market_config(llm.with_overrides(extra), "llm_auction", args.advertisers,
                               args.llm_rounds)
        folder = args.work / setting
        log(f"{setting}: {args.llm_rounds} LLM rounds into {folder}")
        summary = run_market_equilibrium(config, folder,
                                         resume=(folder / "market" / "config.json").is_file())
        seconds[setting] = run_seconds(folder)
        rounds = pd.read_parquet(folder / "rounds.parquet")
        rows += summarize(setting, rounds, summary["revenue"])
        curves[setting] = rounds

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "equilibrium_dynamics.csv", index=False)
    plot(curves, args.out / "equilibrium_dynamics.png")
    joint_blocks = pd.read_parquet(args.work / "llm_joint" / "blocks.parquet")
    command = "python experiments/equilibrium_dynamics.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    lines = ["# Learning bidders: classic auctions vs the LLM market", "",
             f"`{command}`", "",
             f"Population {args.advertisers}; classic: {args.classic_rounds} rounds x "
             f"{args.auctions_per_round} auctions; LLM market: {args.llm_rounds} LLM rounds x "
             f"{llm.market.queries_per_step} queries, {llm.market.surrogate_rounds} surrogate "
             f"rounds after each; joint: one IRPO epoch every {args.rounds_per_epoch} rounds. "
             "Compute time (all sessions): "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()), "",
             markdown_table(table), "",
             "Joint run, per block of rounds served by one policy:", "",
             markdown_table(joint_blocks), ""]
    (args.out / "equilibrium_dynamics.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def plot(curves: dict[str, pd.DataFrame], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(curves), 3.2))
    axes = fig.subplots(1, len(curves))
    for ax, (name, rounds) in zip(axes, curves.items()):
        for kind, g in rounds.groupby("type"):
            mean = g.groupby("round")["multiplier"].mean()
            ax.plot(mean.index, mean.values, label=kind.replace("_", " "))
        ax.set_title(name)
        ax.set_xlabel("LLM round" if name.startswith("llm") else "round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean bid / value")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
