"""Thm 4.5 as an experiment: first price per click is incentive compatible for value maximizers.

For each focal advertiser type, three utility-maximizing opponents first learn to bid against the focal
advertiser (Hedge over shading factors, `run_equilibrium`), then are frozen at their learned shading.
Against those fixed opponents the focal advertiser's every fixed shading factor m (bid = m * v) is
evaluated on the same auctions (values uniform on [0, 1] per auction):

- value maximizer with target ROI tau: objective = value, subject to value >= tau * spend; the
  truthful bid is v / tau. Gain from deviating = best feasible value - value at m = 1/tau (<= 0 by the
  theorem, up to the grid).
- utility maximizer: objective = value - spend; the truthful bid is v. Gain = best utility - utility
  at m = 1 (> 0: shading pays).

Writes docs/results/incentive_compatibility.csv (every factor), incentive_compatibility.md (summary
table) and incentive_compatibility.png.

    python experiments/incentive_compatibility.py [--auctions 200000] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from llmauction_sim.domain.auctions import counterfactual_outcomes  # noqa: E402
from llmauction_sim.equilibrium import run_equilibrium  # noqa: E402

GRID = np.round(np.linspace(0.0, 1.2, 121), 10)
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def evaluate(focal: str, tau: float, auctions: int, seed: int) -> tuple[pd.DataFrame, list[float]]:
    """Every fixed factor of the focal advertiser (index 0) against frozen learned opponents."""
    learned = run_equilibrium("first_price", f"{focal},um:3", rounds=200,
                              auctions_per_round=500, seed=seed).summary
    opponents = [a["mean_shading"] for a in learned["advertisers"][1:]]
    rng = np.random.default_rng(seed + 1)
    values = rng.uniform(0.0, 1.0, (auctions, 4))
    bids = values * np.array([1.0, *opponents])
    candidates = np.zeros((auctions, 4, GRID.size))
    candidates[:, 0, :] = values[:, :1] * GRID
    clicks, pay = counterfactual_outcomes("first_price", bids, candidates)
    value = (values[:, :1] * clicks[:, 0, :]).sum(axis=0) / auctions
    spend = pay[:, 0, :].sum(axis=0) / auctions
    with np.errstate(divide="ignore", invalid="ignore"):
        roi = np.where(spend > 0, value / spend, np.nan)
    frame = pd.DataFrame({"factor": GRID, "value": value, "spend": spend, "roi": roi,
                          "utility": value - spend,
                          "feasible": (spend == 0) | (value >= tau * spend * (1 - 1e-9))})
    return frame, opponents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auctions", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = [("value_maximizer", 1.0), ("value_maximizer", 1.25), ("value_maximizer", 2.0),
             ("utility_maximizer", 1.0)]
    rows, curves = [], []
    for kind, tau in cases:
        focal = f"vm:1:tau={tau}" if kind == "value_maximizer" else "um:1"
        frame, opponents = evaluate(focal, tau, args.auctions, args.seed)
        truthful = 1.0 / tau if kind == "value_maximizer" else 1.0
        t_idx = int(np.argmin(np.abs(GRID - truthful)))
        if kind == "value_maximizer":
            objective = np.where(frame["feasible"], frame["value"], -np.inf)
        else:
            objective = frame["utility"].to_numpy()
        best = int(np.argmax(objective))
        rows.append({"advertiser": kind, "tau": tau, "opponents' shading": ", ".join(
            f"{o:.2f}" for o in opponents), "truthful factor": round(truthful, 4),
            "objective": "value s.t. ROI >= tau" if kind == "value_maximizer" else "utility",
            "truthful objective": round(float(objective[t_idx]), 5),
            "best factor": float(GRID[best]), "best objective": round(float(objective[best]), 5),
            "gain from deviating": round(float(objective[best] - objective[t_idx]), 5),
            "truthful roi": round(float(frame["roi"].iloc[t_idx]), 4)})
        frame.insert(0, "tau", tau)
        frame.insert(0, "advertiser", kind)
        curves.append(frame)
    table = pd.DataFrame(rows)
    pd.concat(curves).to_csv(args.out / "incentive_compatibility.csv", index=False)
    md = "\n".join(["| " + " | ".join(table.columns) + " |",
                    "|" + "---|" * len(table.columns)]
                   + ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(
                       index=False)])
    (args.out / "incentive_compatibility.md").write_text(
        "# Incentive compatibility of first price per click (Thm 4.5)\n\n"
        f"`python experiments/incentive_compatibility.py --auctions {args.auctions} "
        f"--seed {args.seed}`; values uniform on [0, 1], objectives per auction.\n\n" + md + "\n")
    _plot(curves, args.out / "incentive_compatibility.png")
    print(table.to_string(index=False))


def _plot(curves: list[pd.DataFrame], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax_vm, ax_um = fig.subplots(1, 2)
    for frame in curves:
        kind, tau = frame["advertiser"].iloc[0], frame["tau"].iloc[0]
        if kind == "value_maximizer":
            feasible = frame[frame["feasible"]]
            line, = ax_vm.plot(frame["factor"], frame["value"], ":", alpha=0.6)
            ax_vm.plot(feasible["factor"], feasible["value"], "-", color=line.get_color(),
                       label=f"tau = {tau:g} (solid: ROI >= tau)")
            ax_vm.axvline(1 / tau, color=line.get_color(), lw=0.8, ls="--")
        else:
            ax_um.plot(frame["factor"], frame["utility"], label="utility maximizer")
            ax_um.axvline(1.0, color="grey", ls="--", lw=0.8, label="truthful (m = 1)")
            best = frame.loc[frame["utility"].idxmax()]
            ax_um.plot([best["factor"]], [best["utility"]], "o", label=f"best m = "
                       f"{best['factor']:.2f}")
    ax_vm.set(title="Value maximizers: value per auction (dashed: bid v/tau)",
              xlabel="shading factor m (bid = m v)", ylabel="value")
    ax_um.set(title="Utility maximizer: utility per auction", xlabel="shading factor m",
              ylabel="value - payment")
    for ax in (ax_vm, ax_um):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
