"""The paper's Table 2 on the embedded model, with power: every route to a bid-aware allocation on
the same held-out auctions, paired, with 95% intervals.

    python experiments/reproduce_table2.py --data data/q300 --work runs/table2 --out docs/results

Rows (llmauction_sim/comparison.py; each on the same N test auctions: queries, candidates, bids and
click model): the pre-trained model, the shipped warm start (pi_0, bid-blind), MOSAIC on pi_0,
LLM-Auction after IRPO with the pCTR reward and with the oracle (realised clicks) reward, the
tilted decoder (the paper's optimum applied at decoding time) and the ranked ablation. Then the
teacher-forced choice probe (llmauction_sim/probe.py) of each single-pass policy and of the tilt
at several temperatures, and the monotonicity experiment of the tilted decoder and of the IRPO
policy. Every step writes under --work and is skipped when its output exists, so an interrupted
run continues where it stopped (IRPO runs resume at their interrupted phase); both IRPO runs start
from the shipped warm start and share its epoch-0 evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.tables import markdown_table, read_query_log  # noqa: E402

# The settings of docs/results/table2.md; every value can be changed with --set. On a quiet 2-core
# CPU the IRPO runs take 24 and 22 min and the whole script 87 min.
CPU_SETTINGS = [
    "ad_sampling.max_new_tokens=96", "irpo.epochs=2", "irpo.train_queries=96",
    "irpo.samples_per_query=2", "irpo.candidates_per_prompt=4", "irpo.test_queries=48",
    "irpo.max_pairs=96", "warmstart.queries=0", "mechanisms.mosaic.samples=5",
]
PAPER = {  # Table 2 of the paper (Qwen3-4B): 125.28 / 46.88, 125.28 / 73.29, 54.13 / 24.95
    "revenue_vs_pretrained": 2.672, "revenue_vs_mosaic": 1.709, "reward_vs_mosaic": 2.17}
TEMPERATURES = (1.0, 2.0, 5.0, 10.0, 20.0)
_PROBE = 71


def log(text: str) -> None:
    print(f"[table2 {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def fork_epoch0(src: Path, dst: Path) -> None:
    """Start `dst` from `src`'s starting policy and epoch-0 evaluation (resumed by run_irpo)."""
    if (dst / "state.json").is_file():
        return
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "epoch-0", dst / "epoch-0", dirs_exist_ok=True)
    epochs = pd.read_parquet(src / "epochs.parquet")
    epochs[epochs["epoch"] == 0].to_parquet(dst / "epochs.parquet", index=False)
    state = json.loads((src / "state.json").read_text())
    (dst / "state.json").write_text(json.dumps(
        {"epoch": 0, "phase": "evaluate", "seconds": {"0": state["seconds"]["0"]}}))


def irpo_done(folder: Path, epochs: int) -> bool:
    state = folder / "state.json"
    done = json.loads(state.read_text()) if state.is_file() else {}
    return done.get("epoch") == epochs and done.get("phase") == "evaluate"


def policy_config(config: RunConfig, run: Path | None) -> RunConfig:
    """`config` whose `llm_auction` is the newest policy of an IRPO run folder (None: pi_0)."""
    if run is None:
        return config
    from llmauction_sim.learning.irpo import policy_paths

    paths = policy_paths(run)
    return config.with_overrides(
        [f"mechanisms.llm_auction.checkpoint={paths['checkpoint']}"]
        + ([f"mechanisms.llm_auction.adapter={paths['adapter']}"] if paths["adapter"] else []))


def probe_rows(config: RunConfig, policies: dict, requests, work: Path, seed: int) -> pd.DataFrame:
    """The choice probe of each single-pass policy, and of the tilt of pi_0 at TEMPERATURES."""
    from llmauction_sim.lm.prompts import ad_llm_messages
    from llmauction_sim.mechanisms import make_mechanism
    from llmauction_sim.mechanisms.pctr import load_click_model, template_pctr
    from llmauction_sim.mechanisms.tilted import ad_utilities, tilted_choice
    from llmauction_sim.probe import choice_probe, probe_summary

    tilt = config.mechanisms.llm_auction_tilted

    rows = []
    frames = {}
    for label, (cfg, rank) in policies.items():
        path = work / f"probe-{label.replace(' ', '_')}.parquet"
        if not path.is_file():
            log(f"choice probe: {label}")
            mechanism = make_mechanism("llm_auction", cfg)

            def prompt(r, rank=rank, style=cfg.ad_prompt):
                cands = sorted(r.candidates, key=lambda a: -r.bids[a.id]) if rank else r.candidates
                return ad_llm_messages(r.profile, r.query, cands, r.bids, style)
            choice_probe(mechanism.lm, requests, prompt, permutations=4).to_parquet(path)
        frames[label] = pd.read_parquet(path)
        rows.append({"policy": label, **flatten(probe_summary(frames[label],
                                                               np.random.default_rng(seed)))})
    # The tilt is exact given pi_0's choice probabilities q: P(i) ~ q_i exp(u_i / T).
    base = frames["warm start (pi_0)"].copy()
    click_model = load_click_model(config)
    pctr = {r.query_id: p for r, p in zip(requests, template_pctr(click_model, requests))}
    base["pctr"] = [pctr[q][a] for q, a in zip(base["query_id"], base["ad_id"])]
    for t in TEMPERATURES:
        tilted = base.copy()
        for _, idx in tilted.groupby(["auction", "permutation"]).groups.items():
            g = tilted.loc[idx]
            u = ad_utilities(g["bid"], g["pctr"], config.penalty, tilt.penalty_weight, 1)
            tilted.loc[idx, "q"] = tilted_choice(g["log_q"].to_numpy(), u, t)
        rows.append({"policy": f"tilted pi_0, T={t:g}",
                     **flatten(probe_summary(tilted, np.random.default_rng(seed)))})
    return pd.DataFrame(rows)


def flatten(summary: dict) -> dict:
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update({key: value["estimate"], f"{key}_low": value["low"],
                        f"{key}_high": value["high"]})
        else:
            out[key] = value
    return out


def sweep_rows(work: Path, mono: dict, seed: int) -> pd.DataFrame:
    """Per bid sweep: the focal ad's exposure at the lowest and highest bid and its within-query
    slope per 100 bid units, with 95% intervals resampling whole queries (the power statement:
    an interval that excludes 0 is a slope the sweep can see)."""
    from llmauction_sim.statistics import bootstrap, within_slope

    rows = []
    for tag, summary in mono.items():
        s = pd.read_parquet(work / f"monotonicity-{tag}" / "samples.parquet")
        per_query = [(g["bid"].to_numpy(), g["exposed"].to_numpy(float))
                     for _, g in s.groupby("sample")]
        low, high = s["bid"].min(), s["bid"].max()

        def slope(i, per_query=per_query):
            bids = np.concatenate([per_query[j][0] for j in i])
            exposed = np.concatenate([per_query[j][1] for j in i])
            groups = np.repeat(np.arange(len(i)), [len(per_query[j][0]) for j in i])
            return 100 * within_slope(groups, bids, exposed)

        def exposure_at(bid, per_query=per_query):
            return lambda i: np.mean(np.concatenate([e[b == bid] for b, e in
                                                     (per_query[j] for j in i)]))
        row = {"policy": tag, "queries": len(per_query), "answers": summary["answers"]}
        for name, stat in ((f"exposure_at_{low:g}", exposure_at(low)),
                           (f"exposure_at_{high:g}", exposure_at(high)),
                           ("exposure_slope_per_100", slope)):
            est = bootstrap(stat, len(per_query), np.random.default_rng(seed))
            row.update({name: est.estimate, f"{name}_low": est.low, f"{name}_high": est.high})
        rows.append({**row, "itctr_mean_spearman": summary["itctr"]["mean_spearman"],
                     "itctr_violation_rate": summary["itctr"]["violation_rate"]})
    return pd.DataFrame(rows)


def tilt_curves(config: RunConfig, work: Path, requests, out: Path, auctions: int = 8) -> None:
    """The tilted choice's exact allocation curve P(focal ad | mention) over bids 1..100 for the
    first probe auctions (pi_0's probabilities, other bids fixed): continuous and increasing by
    construction, here on the embedded model's own q."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmauction_sim.mechanisms.pctr import load_click_model, template_pctr
    from llmauction_sim.mechanisms.tilted import ad_utilities, tilted_choice

    tilt = config.mechanisms.llm_auction_tilted
    base = pd.read_parquet(work / "probe-warm_start_(pi_0).parquet").query("permutation == 0")
    pctr = {r.query_id: p for r, p in zip(requests, template_pctr(load_click_model(config),
                                                                  requests))}
    grid = np.arange(1, 101, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    for a, g in list(base.groupby("auction"))[:auctions]:
        p = np.array([pctr[q][ad] for q, ad in zip(g["query_id"], g["ad_id"])])
        bids = g["bid"].to_numpy().copy()
        focal = int(np.argmin(g["position"].to_numpy() == 0))  # not the first-listed candidate
        curve = []
        for b in grid:
            bids[focal] = b
            u = ad_utilities(bids, p, config.penalty, tilt.penalty_weight, 1)
            curve.append(tilted_choice(g["log_q"].to_numpy(), u, tilt.temperature)[focal])
        ax.plot(grid, curve, lw=1.2, label=f"auction {a}")
    ax.set_xlabel("focal ad's bid (others fixed)")
    ax.set_ylabel("P(focal ad | mention)")
    ax.set_title(f"tilted choice on pi_0, T={tilt.temperature:g} (exact)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "table2_tilt_curves.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from llmauction_sim.comparison import compare_logs
    from llmauction_sim.data import build_dataset
    from llmauction_sim.evaluation import bid_sweep, evaluate, test_auctions
    from llmauction_sim.learning.irpo import run_irpo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a `data build` folder (default: build 300 "
                        "users' queries with the User-LLM in --work, ~25 min)")
    parser.add_argument("--work", type=Path, default=Path("runs/table2"))
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-queries", type=int, default=240)
    parser.add_argument("--probe-auctions", type=int, default=32)
    parser.add_argument("--monotonicity-queries", type=int, default=8)
    parser.add_argument("--monotonicity-repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="on top of the CPU settings")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed).with_overrides(CPU_SETTINGS + args.overrides)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    timings = work / "timings.json"  # kept across resumed runs
    times: dict[str, float] = json.loads(timings.read_text()) if timings.is_file() else {}

    def timed(name, fn, *fargs, **kwargs):
        start = time.perf_counter()
        out = fn(*fargs, **kwargs)
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        timings.write_text(json.dumps(times, indent=2))
        return out

    data = args.data or work / "data"
    if not (Path(data) / "queries.parquet").is_file():
        log("building 300 users' queries with the User-LLM")
        timed("data", build_dataset, config.with_overrides(["data.profiles=300"]), data,
              progress=False)

    runs = {"pctr": work / "irpo-pctr", "oracle": work / "irpo-oracle"}
    if not irpo_done(runs["pctr"], config.irpo.epochs):
        log("IRPO (pCTR reward)")
        timed("irpo_pctr", run_irpo, config, runs["pctr"],
              resume=(runs["pctr"] / "state.json").is_file(), data=data, progress=True)
    fork_epoch0(runs["pctr"], runs["oracle"])
    if not irpo_done(runs["oracle"], config.irpo.epochs):
        log("IRPO (oracle reward)")
        timed("irpo_oracle", run_irpo, config.with_overrides(["irpo.reward=oracle"]),
              runs["oracle"], resume=True, data=data, progress=True)

    # One row per route, all on the same test auctions.
    rows = {"pre-trained": ("pretrained", config),
            "warm start (pi_0)": ("llm_auction", config),
            f"MOSAIC (M={config.mechanisms.mosaic.samples}, pi_0)": ("mosaic", config),
            "LLM-Auction (pCTR)": ("llm_auction", policy_config(config, runs["pctr"])),
            "LLM-Auction (oracle)": ("llm_auction", policy_config(config, runs["oracle"])),
            f"tilted pi_0 (T={config.mechanisms.llm_auction_tilted.temperature:g})":
                ("llm_auction_tilted", config),
            "ranked pi_0 (ablation)": ("llm_auction_ranked", config)}
    logs, generations = {}, {}
    for label, (name, cfg) in rows.items():
        folder = work / "eval" / f"{len(logs)}-{name}"
        if not (folder / "summary.json").is_file():
            log(f"evaluating {label} on {args.test_queries} test auctions")
            timed(f"eval {label}", evaluate, cfg, name, args.test_queries, folder, data)
        logs[label] = read_query_log(folder / "queries.parquet")
        generations[label] = json.loads((folder / "summary.json").read_text())[
            "generations_per_query"]
    reference = "warm start (pi_0)"
    table = compare_logs(logs, generations, config.seed)[0]
    paired = compare_logs({reference: logs[reference],  # differences against pi_0
                           **{k: v for k, v in logs.items() if k != reference}},
                          generations, config.seed)[1]

    probe_requests, _, _ = test_auctions(config, args.probe_auctions, work / "probe-data", data)
    probe = work / "probe.csv"
    if not probe.is_file():
        policies = {"pre-trained": (config.with_overrides(["mechanisms.policy_adapter="]), False),
                    "warm start (pi_0)": (config, False),
                    "LLM-Auction (pCTR)": (policy_config(config, runs["pctr"]), False),
                    "LLM-Auction (oracle)": (policy_config(config, runs["oracle"]), False),
                    "ranked pi_0 (ablation)": (config, True)}
        timed("probe", probe_rows, config, policies, probe_requests, work, config.seed) \
            .to_csv(probe, index=False)
    probes = pd.read_csv(probe)

    mono = {}
    for tag, (name, cfg) in {"tilted": ("llm_auction_tilted", config),
                             "irpo-pctr": ("llm_auction", policy_config(config, runs["pctr"])),
                             "warm-start": ("llm_auction", config)}.items():
        folder = work / f"monotonicity-{tag}"
        if not (folder / "summary.json").is_file():
            log(f"monotonicity: {tag}")
            timed(f"monotonicity {tag}", bid_sweep, cfg, name, "monotonicity", folder,
                  test_queries=args.monotonicity_queries, repeats=args.monotonicity_repeats,
                  data=data)
        mono[tag] = json.loads((folder / "summary.json").read_text())

    report(args, config, table, paired, reference, probes, mono, runs, times, work,
           probe_requests)
    return 0


def ratio_row(table: pd.DataFrame, num: str, den: str, column: str) -> float | None:
    by = table.set_index("mechanism")
    a, b = by.loc[num, column], by.loc[den, column]
    return None if not b else float(a / b)


def report(args, config, table, paired, reference, probes, mono, runs, times, work,
           probe_requests) -> None:
    from llmauction_sim.comparison import MAIN_COLUMNS, PAIRED_COLUMNS, with_interval

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table2.csv", index=False)
    paired.to_csv(out / "table2_paired.csv", index=False)
    probes.to_csv(out / "table2_probe.csv", index=False)
    mosaic = next(m for m in table["mechanism"] if m.startswith("MOSAIC"))
    tilted = next(m for m in table["mechanism"] if m.startswith("tilted"))
    ours = {}
    for route in ("LLM-Auction (pCTR)", tilted):
        ours[route] = {
            "revenue_vs_pretrained": ratio_row(table, route, "pre-trained", "revenue_per_query"),
            "revenue_vs_mosaic": ratio_row(table, route, mosaic, "revenue_per_query"),
            "expected_revenue_vs_mosaic": ratio_row(table, route, mosaic,
                                                    "expected_revenue_per_query"),
            "expected_revenue_vs_warm_start": ratio_row(table, route, reference,
                                                        "expected_revenue_per_query")}
    command = "python experiments/reproduce_table2.py " + shlex.join(sys.argv[1:])
    (out / "table2.json").write_text(json.dumps(
        {"command": command, "settings": CPU_SETTINGS + args.overrides, "ours": ours,
         "paper": PAPER, "seconds": times}, indent=2, default=float))
    epochs = {kind: pd.read_parquet(d / "epochs.parquet") for kind, d in runs.items()}
    pairs = {kind: [json.loads((d / f"epoch-{t}" / "pairs.json").read_text())
                    for t in range(1, config.irpo.epochs + 1)
                    if (d / f"epoch-{t}" / "pairs.json").is_file()]
             for kind, d in runs.items()}
    main_cols = ["mechanism", *MAIN_COLUMNS, "generations_per_query"]
    text = [f"# Table 2 on the embedded model\n\n```\n{command}\n```\n",
            "Settings on top of the defaults: `" + "`, `".join(CPU_SETTINGS + args.overrides)
            + "`.\n",
            f"Run time: {sum(times.values()) / 60:.0f} min in all ("
            + ", ".join(f"{k} {v / 60:.1f}" for k, v in times.items()) + " min), on "
            f"{os.cpu_count()} CPU cores; a resumed run adds its parts' times.\n",
            f"## Held-out auctions ({int(table['auctions'].iloc[0])}, the same for every row)\n",
            "Estimates with 95% bootstrap intervals over auctions. Expected revenue: bid x the "
            "click model's probability, summed over the shown ads; top-bid share: the share of "
            "all exposures that went to the auction's highest bidder (bid-blind: "
            f"{table['bid_blind_top_bid_share'].iloc[1]:.3f}).\n",
            markdown_table(with_interval(table, MAIN_COLUMNS, 2)[main_cols]), "",
            f"## Paired differences against the {reference}\n",
            markdown_table(with_interval(paired, PAIRED_COLUMNS, 2)
                           [["mechanism", *PAIRED_COLUMNS]]), "",
            "## Ratios against the paper's (point estimates)\n",
            markdown_table(pd.DataFrame([{"route": r, **v, **{f"paper_{k}": p for k, p in
                                                             PAPER.items()}}
                                         for r, v in ours.items()])), "",
            "## Teacher-forced choice probe\n",
            f"{int(probes['auctions'].iloc[0])} test auctions x 4 bid rotations; at the policy's "
            "own mention point, the probability of each candidate's mention. Chance 1/K = "
            f"{probes['chance'].iloc[0]:.2f}; slope: d log q / d bid within a candidate.\n",
            markdown_table(with_interval(probes, ["top_bid_mass", "first_position_mass",
                                                  "log_q_slope_per_bid"], 4)
                           [["policy", "top_bid_mass", "log_q_slope_per_bid",
                             "first_position_mass", "fallback_share"]]), ""]
    for kind, frame in epochs.items():
        cols = ["epoch", "revenue_per_query", "reward_per_query", "ctr", "format_error_rate",
                "pctr_auc", "dpo_loss", "dpo_reward_accuracy", "pairs", "kl_to_reference",
                "seconds"]
        text += [f"## IRPO epochs ({kind} reward, per-epoch test set of "
                 f"{config.irpo.test_queries})\n",
                 markdown_table(frame[[c for c in cols if c in frame]]), ""]
        comp = pd.DataFrame([{"epoch": t + 1, "pairs": p.get("kept"),
                              **{k: v for k, v in p.get("composition", {}).items()
                                 if k in ("valid_vs_valid", "ad_vs_none", "none_vs_ad",
                                          "ad_vs_error", "none_vs_error", "chosen_top_bid",
                                          "valid_pairs_chosen_higher_bid")}}
                             for t, p in enumerate(pairs[kind])])
        if len(comp):
            text += [f"Pair composition ({kind}):\n", markdown_table(comp), ""]
    sweeps = sweep_rows(work, mono, config.seed)
    sweeps.to_csv(out / "table2_monotonicity.csv", index=False)
    estimated = [c for c in sweeps if c.startswith("exposure_") and not c.endswith(("_low",
                                                                                   "_high"))]
    text += ["## Monotonicity (one focal ad per query, bids 1, 10, ..., 100)\n",
             f"{args.monotonicity_queries} queries x {args.monotonicity_repeats} answers per "
             "bid; the focal ad's exposure share at the lowest and highest bid and its slope "
             "within a query (fixed effect per query) per 100 bid units, 95% intervals "
             "resampling whole queries; mean per-query Spearman and violation rate of the "
             "ITCTR curve as in the paper. Plots: table2_monotonicity_<policy>.png; the tilted "
             "choice's exact curve over every bid 1..100: table2_tilt_curves.png.\n",
             markdown_table(with_interval(sweeps, estimated, 3)[
                 ["policy", "queries", "answers", *estimated, "itctr_mean_spearman",
                  "itctr_violation_rate"]]), ""]
    tilt_curves(config, work, probe_requests, out)
    for tag in mono:
        shutil.copy(work / f"monotonicity-{tag}" / "curve.png",
                    out / f"table2_monotonicity_{tag}.png")
    (out / "table2.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    sys.exit(main())
