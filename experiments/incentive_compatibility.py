"""Thm 4.5 as a falsifiable experiment: is bidding v / tau optimal for a value maximizer?

A value maximizer (VM) with value v per click and target ROI tau pays its bid b per click (first
price, Eq. 7). The experiment searches for a bid that gets it more value than the truthful
v / tau, under the two forms of its ROI constraint (llmauction_sim/incentive.py):

- per auction (the theorem's form): value >= tau * payment in every auction, i.e. b <= v / tau;
  a deviation gains only where the allocation falls as the bid rises (non-monotone);
- aggregate (how advertisers budget): total value >= tau * total spend over all its auctions.

Deviations: uniform factors, capped bids min(c v, cap), piecewise-linear bids (random search and
coordinate refinement of the shape, each scaled onto the constraint), and the exact per-value or
per-auction Lagrangian best response. Every deviation is fitted on one sample and its gain is
measured on another (fresh auctions, or other repeats of a sampled curve), paired with the
truthful bid, with a 95% interval.

Allocations:
1. Classic single-slot first price: 3 utility maximizers learn to bid against the focal
   advertiser (Hedge, `run_equilibrium`) and are frozen at their learned shading.
2. LLM-Auction's bid-aware route, the tilted decoder: at the mention point ad i is chosen with
   P(i) ~ q_i exp(b_i pCTR_i / T) (llmauction_sim/mechanisms/tilted.py), computed for every
   candidate of the choice probe of pi_0 (`--probe`, else computed in --work), and the sampled
   bid sweeps (ITCTR at bids 1, 10, ..., 100; `--sweeps`, else computed in --work) of the tilted
   decoder, the bid-blind warm start and (with --irpo-run) the IRPO policy.

Writes docs/results/incentive_compatibility.{md,csv,png} and incentive_compatibility_*.{png,csv}.

    python experiments/incentive_compatibility.py [--data DIR] [--probe FILE] [--sweeps DIR ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from llmauction_sim import incentive as ic  # noqa: E402
from llmauction_sim.classic.bidding import ValueConfig  # noqa: E402
from llmauction_sim.classic.equilibrium import run_equilibrium  # noqa: E402
from llmauction_sim.statistics import bootstrap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
# The settings of the project's Table 2 runs whose probe and sweeps this reads.
LLM_SETTINGS = ["ad_sampling.max_new_tokens=96"]
CLASSIC_CASES = [  # (advertiser, tau, values)
    ("value_maximizer", 1.0, "uniform"), ("value_maximizer", 1.25, "uniform"),
    ("value_maximizer", 2.0, "uniform"), ("value_maximizer", 1.25, "lognormal"),
    ("utility_maximizer", 1.0, "uniform")]
TRUTHFUL = "truthful v/tau"


def log(text: str) -> None:
    print(f"[ic {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "violated: the deviation gains"
    if high < 0:
        return "holds: the deviation loses"
    return "holds: no gain beyond noise"


# --------------------------------------------------------------------------------------------------
# classic first price
# --------------------------------------------------------------------------------------------------


def classic_case(index: int, kind: str, tau: float, values: str, args) -> tuple[list, list]:
    """Rows of the summary and the bid functions (for the figure) of one classic case."""
    value_cfg = ValueConfig(distribution=values)
    focal = f"vm:1:tau={tau}" if kind == "value_maximizer" else "um:1"
    learned = run_equilibrium("first_price", f"{focal},um:3", rounds=200, auctions_per_round=500,
                              seed=args.seed, values=value_cfg).summary
    shadings = [a["mean_shading"] for a in learned["advertisers"][1:]]
    fit_v, fit_o = ic.draw_auctions(shadings, args.fit_auctions,
                                    np.random.default_rng([args.seed, index, 1]), value_cfg)
    eval_v, eval_o = ic.draw_auctions(shadings, args.auctions,
                                      np.random.default_rng([args.seed, index, 2]), value_cfg)
    win = ic.empirical_win(fit_o.max(axis=1))
    rng = np.random.default_rng([args.seed, index, 3])
    bid_max = 1.5 * float(np.quantile(fit_v, 0.999))
    if kind == "value_maximizer":
        fits = {("per auction", k): f for k, f in ic.classic_deviations(
            win, fit_v, tau, rng, constraint="per_auction", bid_max=bid_max).items()}
        fits.update({("aggregate", k): f for k, f in ic.classic_deviations(
            win, fit_v, tau, rng, constraint="aggregate", bid_max=bid_max).items()})
        truthful = eval_v / tau
    else:
        fits = {("none (utility)", k): f for k, f in ic.classic_deviations(
            win, fit_v, tau, rng, objective="utility", bid_max=bid_max).items()}
        truthful = eval_v
    keys = list(fits)
    bids = np.column_stack([truthful] + [fits[k]["bid"](eval_v) for k in keys])
    clicks, pay = ic.classic_outcomes(eval_v, eval_o, bids)
    value = eval_v[:, None] * clicks
    objective = value if kind == "value_maximizer" else value - pay
    rows = []
    base = {"allocation": "classic first price, 3 learned UM opponents", "values": values,
            "advertiser": kind, "tau": tau,
            "opponents' shading": ", ".join(f"{s:.2f}" for s in shadings)}
    for j, (constraint, family) in enumerate(keys, start=1):
        g = ic.paired_gain(objective[:, j], objective[:, 0])
        roi = ic.ratio_normal(value[:, j], pay[:, j])
        rows.append({**base, "constraint": constraint, "deviation": family,
                     "parameters": json.dumps(fits[(constraint, family)]["params"]),
                     "objective": "value" if kind == "value_maximizer" else "utility",
                     "truthful objective": float(objective[:, 0].mean()),
                     "deviation objective": float(objective[:, j].mean()), **g,
                     "deviation roi": roi.estimate, "deviation roi_low": roi.low,
                     "deviation roi_high": roi.high,
                     "verdict": verdict(g["gain_low"], g["gain_high"]),
                     "fit": "1 sample of learned opponents", "evaluated on":
                     f"{args.auctions} fresh auctions (normal interval)"})
    grid = np.linspace(0.0, float(np.quantile(eval_v, 0.99)), 51)
    curves = [{"case": f"{kind} tau={tau:g} {values}", "deviation": TRUTHFUL, "value": v,
               "bid": v / tau if kind == "value_maximizer" else v} for v in grid]
    for constraint, family in keys:
        if constraint == "per auction" or family.startswith("uniform"):
            continue  # v / tau itself, or a factor of the value
        b = fits[(constraint, family)]["bid"](grid)
        curves += [{"case": f"{kind} tau={tau:g} {values}", "deviation":
                    f"{family} ({constraint})", "value": v, "bid": bb} for v, bb in zip(grid, b)]
    return rows, curves


# --------------------------------------------------------------------------------------------------
# the LLM allocation
# --------------------------------------------------------------------------------------------------


def llm_config(args):
    from llmauction_sim.config import RunConfig

    return RunConfig(seed=args.seed).with_overrides(LLM_SETTINGS + args.overrides)


def probe_frame(args, config) -> pd.DataFrame:
    """pi_0's choice probe (given or computed in --work) with each candidate's template pCTR."""
    from llmauction_sim.evaluation import test_auctions
    from llmauction_sim.mechanisms.pctr import load_click_model, template_pctr

    requests, catalog, retriever = test_auctions(config, args.probe_auctions,
                                                 args.work / "probe-data", args.data)
    path = args.probe or args.work / "probe-pi_0.parquet"
    if not path.is_file():
        from llmauction_sim.lm.prompts import ad_llm_messages
        from llmauction_sim.mechanisms import make_mechanism
        from llmauction_sim.probe import choice_probe

        log(f"choice probe of pi_0 on {len(requests)} auctions -> {path}")
        lm = make_mechanism("llm_auction", config).lm
        choice_probe(lm, requests, lambda r: ad_llm_messages(r.profile, r.query, r.candidates,
                                                             r.bids, config.ad_prompt),
                     permutations=4).to_parquet(path)
    frame = pd.read_parquet(path)
    queries = list(frame.groupby("auction")["query_id"].first())
    if queries != [r.query_id for r in requests[:len(queries)]]:
        raise SystemExit(f"{path} was probed on other auctions than --data/--probe-auctions/"
                         "--seed give; pass the matching options")
    pctr_path = args.work / "probe-pctr.parquet"
    wanted = set(zip(frame["query_id"], frame["ad_id"]))
    cached = pd.read_parquet(pctr_path) if pctr_path.is_file() else None
    if cached is None or not wanted <= set(zip(cached["query_id"], cached["ad_id"])):
        click_model = load_click_model(config, encoder=retriever.encoder, catalog=catalog)
        cached = pd.DataFrame([{"query_id": r.query_id, "ad_id": a, "pctr": p}
                               for r, d in zip(requests, template_pctr(click_model, requests))
                               for a, p in d.items()])
        cached.to_parquet(pctr_path)
    return frame.merge(cached, on=["query_id", "ad_id"], how="left", validate="many_to_one")


def sweep_folders(args, config) -> list[Path]:
    """The bid sweeps given with --sweeps, else computed in --work (skipped when present)."""
    if args.sweeps:
        return [p for p in args.sweeps if (p / "samples.parquet").is_file()]
    from llmauction_sim.evaluation import bid_sweep

    runs = {"tilted": ("llm_auction_tilted", config), "warm-start": ("llm_auction", config)}
    if args.irpo_run:
        from llmauction_sim.learning.irpo import policy_paths

        paths = policy_paths(args.irpo_run)
        runs["irpo"] = ("llm_auction", config.with_overrides(
            [f"mechanisms.llm_auction.checkpoint={paths['checkpoint']}"]
            + ([f"mechanisms.llm_auction.adapter={paths['adapter']}"] if paths["adapter"]
               else [])))
    folders = []
    for tag, (name, cfg) in runs.items():
        folder = args.work / f"monotonicity-{tag}"
        if not (folder / "summary.json").is_file():
            log(f"bid sweep of {name} ({tag}) -> {folder}")
            bid_sweep(cfg, name, "monotonicity", folder, test_queries=args.sweep_queries,
                      repeats=args.sweep_repeats, data=args.data)
        folders.append(folder)
    return folders


def tilt_analysis(frame: pd.DataFrame, temperature: float, bid_high: float, args
                  ) -> tuple[list, dict]:
    """Per-auction and aggregate deviations of every probed candidate under the tilt at T."""
    rows = ic.tilt_rows(frame, temperature)
    truth = rows["bid"].to_numpy()
    clusters = rows["auction"].to_numpy()
    grid = np.arange(0.0, bid_high + 1e-9, 0.5)
    bids = np.column_stack([truth, np.tile(grid, (len(rows), 1))])
    x = ic.tilt_itctr(rows, bids, temperature)
    value, spend = truth[:, None] * x, bids * x  # value = tau * truthful bid; tau cancels
    rng = np.random.default_rng([args.seed, int(temperature * 1000)])
    idx = np.arange(len(rows))
    out = []
    base = {"allocation": f"tilted pi_0 (computed from the probe), T={temperature:g}",
            "values": f"tau x the probe's bids ({len(rows)} ad-auctions)", "advertiser":
            "value_maximizer", "tau": "any", "objective": "value"}

    def add(constraint, family, dev_value, dev_spend, fit, evaluated, params, interval=None):
        rel = ic.clustered_ratio(dev_value - value[:, 0], value[:, 0], clusters, rng,
                                 args.bootstrap) if interval is None else interval
        roi = ic.clustered_ratio(dev_value, dev_spend, clusters, rng, args.bootstrap)
        if fit == "exact allocation":  # fitted to these auctions: its ROI is what it was fitted to
            roi = type(roi)(roi.estimate, roi.estimate, roi.estimate)
        gain = float((dev_value - value[:, 0]).sum() / len(rows))
        out.append({**base, "constraint": constraint, "deviation": family,
                    "parameters": json.dumps(params),
                    "truthful objective": float(value[:, 0].mean()),
                    "deviation objective": float(dev_value.mean()), "gain": gain,
                    "relative": rel.estimate, "relative_low": rel.low,
                    "relative_high": rel.high, "deviation roi": roi.estimate,
                    "deviation roi_low": roi.low, "deviation roi_high": roi.high,
                    "verdict": verdict(rel.low, rel.high), "fit": fit, "evaluated on": evaluated})

    choice = ic.best_feasible(value, bids <= truth[:, None])
    add("per auction", "best bid <= v/tau (per ad-auction)", value[idx, choice],
        spend[idx, choice], "exact allocation", "same ad-auctions (bootstrap over auctions)",
        {"moved": int((choice != 0).sum()),
         "largest gain per ad-auction": float((value[idx, choice] - value[:, 0]).max())})
    choice, w = ic.lagrangian_plan(value, spend, 1.0)
    plan = bids[idx, choice]

    def refit(i):
        c, _ = ic.lagrangian_plan(value[i], spend[i], 1.0)
        return (value[i][np.arange(len(i)), c].sum() - value[i, 0].sum()) / value[i, 0].sum()
    auctions = np.unique(clusters)
    members = [np.flatnonzero(clusters == a) for a in auctions]
    interval = bootstrap(lambda i: refit(np.concatenate([members[j] for j in i])),
                         len(auctions), rng, samples=args.refit_bootstrap)
    add("aggregate", "per ad-auction Lagrangian (knows each auction's allocation)",
        value[idx, choice], spend[idx, choice], "exact allocation",
        "same ad-auctions (bootstrap over auctions, re-solved)",
        {"w": round(w, 5), "moved": int((choice != 0).sum())}, interval)

    # Bid functions of the value alone, fitted on one half of the auctions and measured on the
    # other, both ways.
    fold_of = dict(zip(auctions, np.random.default_rng([args.seed, 7]).permutation(
        len(auctions)) % 2))
    fold = np.array([fold_of[a] for a in clusters])
    families = ("capped min(c v, cap)", "piecewise linear (6 knots)",
                "multiplier per value decile (Lagrangian)")
    dev_bids = {name: np.zeros(len(rows)) for name in families}
    params: dict = {name: {} for name in families}
    mult = np.round(np.arange(0.0, 3.0 + 1e-9, 0.02), 4)
    for f in (0, 1):
        fit, held = fold == f, fold != f
        t_fit, t_held, sub = truth[fit], truth[held], rows[fit]

        def win(b, sub=sub):
            return ic.tilt_itctr(sub, b.T, temperature).T

        k, c, _ = ic.search_shape(ic.capped_shape, t_fit, win, 1.0, [0.0], [t_fit.max()], rng,
                                  starts=[[t_fit.max()]], bid_cap=bid_high)
        dev_bids[families[0]][held] = np.minimum(c * np.minimum(t_held, k[0]), bid_high)
        params[families[0]][f"fold {f}"] = {"c": round(c, 4), "cap": round(min(c * k[0],
                                                                               bid_high), 2)}
        knots = np.quantile(t_fit, np.linspace(0.0, 1.0, 6))
        h, c, _ = ic.search_shape(ic.piecewise_linear(knots), t_fit, win, 1.0, np.zeros(6),
                                  np.full(6, knots[-1]), rng, starts=[knots], bid_cap=bid_high)
        dev_bids[families[1]][held] = np.minimum(np.interp(t_held, knots, c * h), bid_high)
        params[families[1]][f"fold {f}"] = {"knots": knots.round(1).tolist(),
                                            "bids": np.minimum(c * h, bid_high).round(1).tolist()}
        edges = np.quantile(t_fit, np.linspace(0, 1, 11)[1:-1])
        bins = np.searchsorted(edges, truth, side="right")
        mb = np.minimum(t_fit[:, None] * mult[None, :], bid_high)
        mx = ic.tilt_itctr(sub, mb, temperature)
        mv, ms = t_fit[:, None] * mx, mb * mx
        bv = np.stack([mv[bins[fit] == j].sum(axis=0) for j in range(10)])
        bs = np.stack([ms[bins[fit] == j].sum(axis=0) for j in range(10)])
        # Column 0 of each bin's menu is the truthful multiplier 1.
        one = int(np.flatnonzero(mult == 1.0)[0])
        order = np.concatenate([[one], np.delete(np.arange(mult.size), one)])
        choice_bins, _ = ic.lagrangian_plan(bv[:, order], bs[:, order], 1.0)
        m_bins = mult[order][choice_bins]
        dev_bids[families[2]][held] = np.minimum(t_held * m_bins[bins[held]], bid_high)
        params[families[2]][f"fold {f}"] = {"multipliers": m_bins.round(2).tolist()}
    for name in families:
        b = dev_bids[name]
        x_dev = ic.tilt_itctr(rows, b[:, None], temperature)[:, 0]
        add("aggregate", f"{name}, bid function of the value", truth * x_dev, b * x_dev,
            "other half of the auctions", "held-out half, both ways (bootstrap over auctions)",
            params[name])
    figure = {"truth": truth, "plan": plan, "value_bid": dev_bids[families[0]],
              "rows": rows, "temperature": temperature}
    return out, figure


def sweep_analysis(folder: Path, args) -> tuple[list, dict]:
    """Per-auction deviations on a sampled bid sweep: in sample and cross-fitted over repeats."""
    samples = pd.read_parquet(folder / "samples.parquet")
    summary = json.loads((folder / "summary.json").read_text()) \
        if (folder / "summary.json").is_file() else {}
    name = summary.get("mechanism", "?")
    tag = folder.name.removeprefix("monotonicity-")
    bids, _, x = ic.sweep_arrays(samples)
    if x.shape[2] < 2:
        raise SystemExit(f"{folder}: cross-fitting needs at least 2 repeats per bid")
    halves = [x[:, :, 0::2].mean(axis=2), x[:, :, 1::2].mean(axis=2)]
    pooled = x.mean(axis=2)
    units = x.shape[0] * bids.size
    base = {"allocation": f"sampled bid sweep: {tag} ({name})", "values":
            f"tau x bid, {x.shape[0]} queries x {bids.size} bids x {x.shape[2]} answers",
            "advertiser": "value_maximizer", "tau": "any", "objective": "value",
            "constraint": "per auction"}
    fits = {"in sample (optimistic)": [ic.sweep_gains(pooled, pooled, bids, "per_auction")],
            "cross-fitted over repeats": [
                ic.sweep_gains(halves[0], halves[1], bids, "per_auction"),
                ic.sweep_gains(halves[1], halves[0], bids, "per_auction")]}
    out = []
    for how, parts in fits.items():
        tot = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
        rel = ic.cluster_ratio_t(tot["gain"], tot["truthful_value"])
        roi = ic.cluster_ratio_t(tot["deviation_value"], tot["deviation_spend"])
        out.append({**base, "deviation": f"best grid bid <= v/tau per query and bid, {how}",
                    "parameters": json.dumps({"moved": round(float(tot["moved"].sum()), 1),
                                              "units": units}),
                    "truthful objective": float(tot["truthful_value"].sum() / units),
                    "deviation objective": float(tot["deviation_value"].sum() / units),
                    "gain": float(tot["gain"].sum() / units),
                    "relative": rel.estimate, "relative_low": rel.low,
                    "relative_high": rel.high, "deviation roi": roi.estimate,
                    "deviation roi_low": roi.low, "deviation roi_high": roi.high,
                    "verdict": verdict(rel.low, rel.high),
                    "fit": "same answers" if how.startswith("in") else "other repeats",
                    "evaluated on": "t interval over queries"})
    figure = {"tag": tag, "bids": bids, "curve": pooled, "summary": summary,
              "repeats": x.shape[2]}
    return out, figure


def bid_text_effect(frame: pd.DataFrame, temperature: float) -> dict:
    """How far pi_0's own choice moves with the bid written in its prompt (held fixed by the
    computed tilt): the within-candidate slope and residual sd of log q across the rotations,
    and the bid gap within which that noise could reorder the tilt's allocation."""
    from llmauction_sim.statistics import within_slope

    key = frame["auction"].astype(str) + ":" + frame["ad_id"]
    slope = within_slope(key.to_numpy(), frame["bid"].to_numpy(), frame["log_q"].to_numpy())
    centred = frame["log_q"] - frame.groupby(key)["log_q"].transform("mean")
    bid_c = frame["bid"] - frame.groupby(key)["bid"].transform("mean")
    resid = centred - slope * bid_c
    sd = float(np.sqrt((resid ** 2).sum() / max(len(frame) - key.nunique() - 1, 1)))
    gap = sd * temperature / frame["pctr"].to_numpy()
    return {"log_q_slope_per_bid": slope, "log_q_residual_sd": sd,
            "median_bid_gap": float(np.median(gap))}


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

COLUMNS = ["allocation", "values", "advertiser", "tau", "constraint", "deviation", "objective",
           "truthful objective", "deviation objective", "gain", "relative", "relative_low",
           "relative_high", "deviation roi", "deviation roi_low", "deviation roi_high",
           "verdict", "parameters", "fit", "evaluated on"]


def pct(row, key="relative") -> str:
    if pd.isna(row[key]):
        return "n/a"
    return f"{100 * row[key]:+.2f}% [{100 * row[key + '_low']:+.2f}, {100 * row[key + '_high']:+.2f}]"


def roi_text(row) -> str:
    return (f"{row['deviation roi']:.4f} [{row['deviation roi_low']:.4f}, "
            f"{row['deviation roi_high']:.4f}]")


def short_params(text: str) -> str:
    """Parameters for a table cell: numbers rounded, value knots and bin edges left to the CSV."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return "(" + ", ".join(f"{k}={fmt(x)}" for k, x in v.items()
                                   if k not in ("knots",)) + ")"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return str(v)

    params = json.loads(text)
    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items()
                     if k not in ("knots", "deciles of the truthful bid")) or "-"


def md_table(frame: pd.DataFrame, columns: dict) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(fn(row)) for fn in columns.values()) + " |"
                            for _, row in frame.iterrows())


def write_report(args, table: pd.DataFrame, curves: pd.DataFrame, figures: dict,
                 extras: dict, seconds: float) -> None:
    out = args.out
    table[COLUMNS].to_csv(out / "incentive_compatibility.csv", index=False)
    curves.round(5).to_csv(out / "incentive_compatibility_bids.csv", index=False)
    command = "python experiments/incentive_compatibility.py " + shlex.join(args.argv)
    classic = table[table["allocation"].str.startswith("classic")]
    vm = classic[classic["advertiser"] == "value_maximizer"]
    um = classic[classic["advertiser"] == "utility_maximizer"]
    text = [
        "# Incentive compatibility of first price per click for value maximizers (Thm 4.5)\n",
        f"```\n{command.strip()}\n```\n",
        f"({seconds / 60:.1f} minutes; seed {args.seed}.) Figures: "
        "[gains](incentive_compatibility.png), [classic bid functions]"
        "(incentive_compatibility_classic.png), [LLM allocation](incentive_compatibility_llm.png)"
        "; every row with its parameters: [incentive_compatibility.csv]"
        "(incentive_compatibility.csv).\n",
        "A value maximizer (VM) with value v per click and target ROI tau pays its bid per "
        "click. The theorem says its best bid is v / tau. The experiment looks for a better one "
        "under both forms of the ROI constraint:\n",
        "- **per auction** (the theorem's form): value >= tau x payment in every auction, i.e. "
        "b <= v / tau; a lower bid can only gain where the allocation falls as the bid rises;",
        "- **aggregate** (how advertisers budget): total value >= tau x total spend over all "
        "the VM's auctions, so spend saved in one auction can buy clicks in another.\n",
        "Deviations: a uniform factor m v, a capped bid min(c v, cap), a piecewise-linear bid "
        "(6 knots), each shape searched by random search and coordinate refinement and scaled "
        "onto the constraint, and the exact Lagrangian best response (per value bin, or per "
        "auction where the allocation of each auction is known: maximize v x(b) - w tau b x(b), "
        "bisect w). Each is fitted on one sample and measured on another (fresh auctions, the "
        "held-out half of the auctions, or the other repeats of a sampled curve), paired with "
        "the truthful bid. Gain = value of the deviation - value of v / tau, relative to the "
        "latter, with a 95% interval.\n",
        "## Where the property holds and where it does not\n",
    ]
    text += summary_lines(table, extras)
    text += [
        "\n## Classic single-slot first price\n",
        "Three utility maximizers learn to bid against the focal advertiser (Hedge over "
        "shading factors, 200 rounds x 500 auctions) and are frozen at their mean shading. "
        f"Deviations are fitted against the empirical win curve of {args.fit_auctions} "
        f"auctions and measured on {args.auctions} fresh ones (the classic engine's "
        "counterfactuals; normal intervals). Values uniform on [0, 1] (one row lognormal, "
        "log sd 0.5).\n",
        md_table(vm, {"tau": lambda r: r["tau"], "values": lambda r: r["values"],
                      "opponents": lambda r: r["opponents' shading"],
                      "constraint": lambda r: r["constraint"],
                      "deviation": lambda r: r["deviation"],
                      "parameters": lambda r: short_params(r["parameters"]),
                      "value per auction, truthful": lambda r: f"{r['truthful objective']:.4f}",
                      "gain [95% CI]": pct, "ROI of the deviation [95% CI]": roi_text}),
        "\nThe uniform factor's ROI is 1/m whatever the allocation, so its best feasible value "
        "is v / tau by construction (gain 0); it is kept as the check that the search recovers "
        "it. Under the per-auction constraint the win probability is monotone, so no bid below "
        "v / tau wins more (gain 0 in every row). Under the aggregate constraint the exact "
        "optimum against opponents bidding s u (u uniform) is min(c v, s): below the highest "
        "opposing bid s the best response b^n (v' - b) is linear in the value, so the gain "
        "comes from not paying above s. The closed form (`incentive.capped_linear_optimum`) "
        "for opponents at 0.74: " + extras.get("closed_form", "") + ". With lognormal values "
        "the win probability is not a power of the bid, so the best response is not linear in "
        "the value even without a ceiling on the opposing bids: the VM bids above v/tau at low "
        "values and below it at high ones (figure below).\n",
        "**Utility maximizers** (no ROI constraint, truthful bid v, utility 0 by definition): "
        "the expected non-IC of first price. Shading to the best factor, or bidding the "
        "per-value best response, earns:\n",
        md_table(um, {"opponents": lambda r: r["opponents' shading"],
                      "deviation": lambda r: r["deviation"],
                      "parameters": lambda r: short_params(r["parameters"]),
                      "utility per auction [95% CI]": lambda r: (
                          f"{r['gain']:.4f} [{r['gain_low']:.4f}, {r['gain_high']:.4f}]")}),
        "",
    ]
    llm = table[~table["allocation"].str.startswith("classic")]
    if len(llm):
        text += llm_lines(llm, extras)
    text += [
        "\n## Figures\n",
        "![gains](incentive_compatibility.png)\n",
        "![classic bid functions](incentive_compatibility_classic.png)\n",
    ]
    if len(llm):
        text += ["![LLM allocation](incentive_compatibility_llm.png)\n"]
    (out / "incentive_compatibility.md").write_text("\n".join(text) + "\n")
    plot_gains(table, out / "incentive_compatibility.png")
    plot_classic(curves, out / "incentive_compatibility_classic.png")
    if figures.get("tilt") or figures.get("sweeps"):
        plot_llm(figures, out / "incentive_compatibility_llm.png")


def best_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting and constraint, the deviation with the largest gain (sweeps: cross-fitted)."""
    table = table[table["relative"].notna()]
    table = table[~table["deviation"].str.contains("in sample")]
    keys = ["allocation", "values", "tau", "constraint"]
    idx = table.groupby(keys, sort=False)["relative"].idxmax()
    return table.loc[idx.to_numpy()]


def summary_lines(table: pd.DataFrame, extras: dict) -> list[str]:
    best = best_rows(table)
    lines = [md_table(best, {
        "allocation": lambda r: r["allocation"].replace(", 3 learned UM opponents", ""),
        "tau": lambda r: r["tau"] if r["tau"] == "any" else f"{r['tau']:g}",
        "values": lambda r: r["values"].split(" (")[0].split(",")[0],
        "constraint": lambda r: r["constraint"], "best deviation": lambda r: r["deviation"],
        "gain [95% CI]": pct, "verdict": lambda r: r["verdict"]}), ""]
    per = best[best["constraint"] == "per auction"]
    agg = best[best["constraint"] == "aggregate"]
    exact = per[~per["allocation"].str.startswith("sampled")]
    sampled = per[per["allocation"].str.startswith("sampled")]
    exact_holds = bool(len(exact)) and exact["relative_high"].max() <= 1e-3
    sampled_gains = sampled[sampled["relative_low"] > 0]
    lines.append(
        "- **Per-auction constraint (the theorem's form): "
        + ("IC holds.** " if exact_holds and not len(sampled_gains) else "see the rows.** ")
        + f"Where the allocation is monotone (classic first price, the computed tilt) the "
        f"largest gain over {len(exact)} settings is "
        f"{100 * exact['relative_high'].max():+.2f}% (upper 95% bound). On the sampled curves, "
        "cross-fitted: " + "; ".join(
            f"{r['allocation'].split(': ')[1].split(' (')[0]} {pct(r)}"
            for _, r in sampled.iterrows()) + ". "
        + ("No sampled curve gives a gain beyond sampling noise, but with "
           f"{extras.get('sweep_size', 'few answers')} the intervals are wide: "
           "a violation smaller than their upper bounds would go unseen."
           if not len(sampled_gains) else
           "A gain beyond sampling noise: " + ", ".join(
               r["allocation"] for _, r in sampled_gains.iterrows()) + "."))
    classic = agg[agg["allocation"].str.startswith("classic")]
    tilt = agg[agg["allocation"].str.startswith("tilted")]
    fails = bool((agg["relative_low"] > 0).any())
    lines.append(
        "- **Aggregate constraint (how advertisers budget): "
        + ("IC fails.** " if fails else "no gain found.** ")
        + "Against the same frozen opponents the best non-uniform bid gives: " + "; ".join(
            f"tau = {r['tau']:g} ({r['values']}) {pct(r)}" for _, r in classic.iterrows())
        + ". Against symmetric opponents with uniform values the win probability is a power "
        "of the bid, so the best response is linear in the value up to the highest opposing "
        "bid: v/tau stays optimal while the truthful bids stay below it (tau = 2 here). On the "
        "LLM allocation, an advertiser that knows each auction's allocation gains "
        + "; ".join(f"{r['allocation'].split(', ')[-1]} {pct(r)}" for _, r in tilt.iterrows())
        + " at the same ROI; bid functions of the value alone, fitted on half of the probe's "
        "auctions and measured on the other half, see the table below.")
    um = table[table["advertiser"] == "utility_maximizer"]
    if len(um):
        r = um.loc[um["gain"].idxmax()]
        lines.append(
            "- **Utility maximizers: not IC, as expected of first price.** Bidding the value "
            "earns utility 0; the best deviation (" + r["deviation"] + ") earns "
            f"{r['gain']:.4f} [{r['gain_low']:.4f}, {r['gain_high']:.4f}] per auction.")
    return lines


def llm_columns() -> dict:
    """The columns of both LLM-allocation tables."""
    return {"allocation": lambda r: r["allocation"], "constraint": lambda r: r["constraint"],
            "deviation": lambda r: r["deviation"],
            "parameters": lambda r: short_params(r["parameters"]),
            "gain [95% CI]": pct, "ROI / tau of the deviation [95% CI]": roi_text}


def llm_lines(llm: pd.DataFrame, extras: dict) -> list[str]:
    tilt = llm[llm["allocation"].str.startswith("tilted")]
    sweeps = llm[llm["allocation"].str.startswith("sampled")]
    lines = ["## The LLM allocation\n"]
    if len(tilt):
        effect = extras.get("bid_text", {})
        lines += [
            "**Computed tilt.** For every candidate of the choice probe of pi_0 "
            f"({extras.get('probe', '')}), its ITCTR x_i(b) = pCTR_i P(i | b, others' bids) "
            "at the first mention, P(i) ~ q_i exp(b_i pCTR_i / T), with q from pi_0 and pCTR "
            "the click model's template pCTR. The VM's truthful bid is the auction's bid "
            "(value tau x bid: tau cancels from every ratio, so the rows hold for any tau). "
            "Bids may range over [0, market.bid_high]. Intervals: bootstrap over the "
            "auctions (the context-aware plan re-solved in each resample).\n",
            md_table(tilt, llm_columns()),
            "",
            "The tilt is increasing in the own bid, so under the per-auction constraint no "
            "lower bid shows the ad more often (gain 0, no ad-auction moves). Under the "
            "aggregate constraint a VM that bids lower where its ad already dominates and "
            "higher where a little more bid buys a lot of probability gains value at the same "
            "ROI: x(b) is logistic in b, not a power of it, so the Lagrangian best response is "
            "not linear in the value. "
            "The computed tilt holds q at the probed prompt: pi_0 also reads the bids written "
            "in its prompt, and across the probe's bid rotations log q_i moves with the own bid "
            f"by {effect.get('log_q_slope_per_bid', float('nan')):.2g} per bid unit (residual sd "
            f"{effect.get('log_q_residual_sd', float('nan')):.3f}); at T = 5 that noise could "
            "reorder the allocation only between bids closer than about "
            f"{effect.get('median_bid_gap', float('nan')):.1f} units (median over ads). Only "
            "the first mention's choice is modelled; whether to open a mention also rises with "
            "the bids. The sampled sweeps below include both.\n"]
    if len(sweeps):
        lines += [
            "**Sampled curves.** The bid sweeps (`bid_sweep(..., mode='monotonicity')`: one "
            "focal ad per query, bids 1, 10, ..., 100, the focal ad's pCTR in each answer, 0 "
            "when not shown). A VM whose truthful bid is b_g picks another grid bid. In sample, "
            "the pick and its value come from the same answers (biased upwards by the noise it "
            "selects on); cross-fitted, the pick is made on half of the repeats and measured on "
            "the other half, both ways, so a flat curve gives 0 in expectation. Intervals: "
            "delta method with a Student t over the queries (too few for a bootstrap).\n",
            md_table(sweeps, llm_columns()),
            "",
            "A negative cross-fitted gain means the lower bid picked on one half did worse "
            "on the other: what a rising curve gives, and on a flat curve noise around 0.\n",
            "Monotonicity of the sampled curves (from each sweep's summary): "
            + "; ".join(f"{k}: mean Spearman of ITCTR with the bid "
                        f"{v.get('mean_spearman', float('nan')):.2f}"
                        for k, v in extras.get("sweep_stats", {}).items()) + ".\n"]
    return lines


def label(r) -> str:
    alloc = r["allocation"].split(",")[0].replace("classic first price", "classic")
    alloc = alloc.replace(" (computed from the probe)", ",").replace("sampled bid sweep", "sweep")
    if alloc.startswith("tilted"):
        alloc += r["allocation"].split(",")[-1]
    tau = "" if r["tau"] == "any" else f" tau={r['tau']:g}"
    values = " lognormal" if r["values"] == "lognormal" else ""
    return f"{alloc}{tau}{values} | {r['deviation'][:48]}"


def plot_gains(table: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    rows = table[table["relative"].notna()]
    rows = rows[~rows["deviation"].str.contains("in sample")]
    fig = Figure(figsize=(10, 0.32 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    colors = {"per auction": "tab:blue", "aggregate": "tab:red"}
    for yy, (_, r) in zip(y, rows.iterrows()):
        c = colors.get(r["constraint"], "grey")
        ax.errorbar(100 * r["relative"], yy, xerr=[[100 * (r["relative"] - r["relative_low"])],
                                                   [100 * (r["relative_high"] - r["relative"])]],
                    fmt="o", color=c, ms=4, capsize=2)
    labels = [label(r) for _, r in rows.iterrows()]
    ax.set_yticks(y, labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("gain in value over the truthful bid v/tau, % (95% CI)")
    ax.set_title("Best deviations of a value maximizer\n(blue: per-auction ROI constraint, "
                 "red: aggregate; sweeps cross-fitted)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.savefig(path, dpi=110)


def plot_classic(curves: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    cases = [c for c in curves["case"].unique() if c.startswith("value_maximizer")]
    fig = Figure(figsize=(4 * len(cases), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cases)))
    for ax, case in zip(axes, cases):
        frame = curves[curves["case"] == case]
        for dev, g in frame.groupby("deviation", sort=False):
            if dev.endswith("(per auction)") or dev.startswith("uniform"):
                continue
            style = {"ls": "--", "color": "black"} if dev == TRUTHFUL else {}
            ax.plot(g["value"], g["bid"], label=dev.replace(" (aggregate)", ""), lw=1.2, **style)
        ax.set(title=case.replace("value_maximizer ", "VM "), xlabel="value v",
               ylabel="bid b(v)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Classic first price: the VM's best bid functions under the aggregate ROI "
                 "constraint (dashed: v/tau)")
    fig.savefig(path, dpi=110)


def plot_llm(figures: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_curve, ax_tilt, ax_plan = fig.subplots(1, 3)
    for f in figures.get("sweeps", []):
        mean = f["curve"].mean(axis=0)
        se = f["curve"].std(axis=0, ddof=1) / np.sqrt(f["curve"].shape[0])
        ax_curve.errorbar(f["bids"], mean, yerr=1.96 * se, marker="o", ms=3, capsize=2,
                          label=f["tag"])
    ax_curve.set(title="Sampled ITCTR curves (mean over queries, 95% CI)", xlabel="bid",
                 ylabel="ITCTR of the focal ad")
    ax_curve.legend(fontsize=8)
    tilt = figures.get("tilt")
    if tilt:
        rows = tilt["rows"]
        grid = np.linspace(0, 100, 201)
        pick = np.random.default_rng(0).choice(len(rows), size=min(12, len(rows)), replace=False)
        x = ic.tilt_itctr(rows.iloc[pick], np.tile(grid, (len(pick), 1)), tilt["temperature"])
        for xi in x:
            ax_tilt.plot(grid, xi, lw=1, alpha=0.8)
        ax_tilt.set(title=f"Computed tilt x_i(b), 12 ads (T={tilt['temperature']:g})",
                    xlabel="own bid (others fixed)", ylabel="pCTR x P(chosen)")
        ax_plan.scatter(tilt["truth"], tilt["plan"], s=6, alpha=0.5,
                        label="per ad-auction Lagrangian")
        ax_plan.scatter(tilt["truth"], tilt["value_bid"], s=6, alpha=0.5,
                        label="capped bid of the value (cross-fitted)")
        ax_plan.plot([0, 100], [0, 100], "k--", lw=0.8, label="truthful")
        ax_plan.set(title="Aggregate ROI: the VM's best bids", xlabel="truthful bid (v/tau)",
                    ylabel="deviation bid")
        ax_plan.legend(fontsize=8)
    for ax in (ax_curve, ax_tilt, ax_plan):
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auctions", type=int, default=200_000,
                        help="fresh auctions on which each classic deviation is measured")
    parser.add_argument("--fit-auctions", type=int, default=1_000_000,
                        help="auctions whose win curve the classic deviations are fitted on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("runs/incentive"),
                        help="where the LLM inputs are computed when not given")
    parser.add_argument("--data", type=Path, help="a `data build` folder for the LLM auctions "
                        "(default: built in --work by the User-LLM)")
    parser.add_argument("--probe", type=Path, help="pi_0's choice probe (a probe parquet of "
                        "experiments/reproduce_table2.py); default: computed in --work")
    parser.add_argument("--sweeps", type=Path, nargs="*", help="bid-sweep folders "
                        "(samples.parquet); default: the tilted decoder and the warm start "
                        "swept in --work")
    parser.add_argument("--irpo-run", type=Path, help="also sweep this IRPO run's policy")
    parser.add_argument("--probe-auctions", type=int, default=32)
    parser.add_argument("--sweep-queries", type=int, default=8)
    parser.add_argument("--sweep-repeats", type=int, default=2)
    parser.add_argument("--temperatures", default="1,5,20",
                        help="tilt temperatures T for the computed allocation")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--refit-bootstrap", type=int, default=300,
                        help="resamples of the re-solved per-auction Lagrangian plan")
    parser.add_argument("--no-llm", action="store_true", help="classic first price only")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="config overrides for the LLM part")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    rows, curves = [], []
    for index, (kind, tau, values) in enumerate(CLASSIC_CASES):
        log(f"classic: {kind} tau={tau} {values}")
        r, c = classic_case(index, kind, tau, values, args)
        rows += r
        curves += c
    s, n = 0.74, 3
    closed = "; ".join(
        f"tau = {tau:g}: c = {c:.4f}, gain {100 * (val / tv - 1):+.2f}%"
        for tau in (1.0, 1.25, 2.0) for c, val, tv in [ic.capped_linear_optimum(s, n, tau)])
    extras: dict = {"closed_form": closed}
    figures: dict = {}
    if not args.no_llm:
        args.work.mkdir(parents=True, exist_ok=True)
        config = llm_config(args)
        frame = probe_frame(args, config)
        extras["probe"] = (f"{frame['auction'].nunique()} auctions x "
                           f"{frame['permutation'].nunique()} bid rotations x "
                           f"{int(frame['k'].iloc[0])} candidates")
        temperatures = [float(t) for t in args.temperatures.split(",")]
        for t in temperatures:
            log(f"tilt at T={t:g}")
            r, f = tilt_analysis(frame, t, float(config.market.bid_high), args)
            rows += r
            if t == config.mechanisms.llm_auction_tilted.temperature or "tilt" not in figures:
                figures["tilt"] = f
        extras["bid_text"] = bid_text_effect(frame, config.mechanisms.llm_auction_tilted.temperature)
        figures["sweeps"] = []
        extras["sweep_stats"] = {}
        for folder in sweep_folders(args, config):
            log(f"sweep {folder}")
            r, f = sweep_analysis(folder, args)
            rows += r
            figures["sweeps"].append(f)
            extras["sweep_stats"][f["tag"]] = f["summary"].get("itctr", {})
            extras["sweep_size"] = (f"{f['curve'].shape[0]} queries and {f['repeats']} answers "
                                    "per bid")
    table = pd.DataFrame(rows)
    write_report(args, table, pd.DataFrame(curves), figures, extras,
                 time.perf_counter() - start)
    print(table[["allocation", "tau", "constraint", "deviation", "relative", "relative_low",
                 "relative_high", "deviation roi", "verdict"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
