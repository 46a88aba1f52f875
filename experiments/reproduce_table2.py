"""The paper's Table 2 on the embedded model: pre-trained, MOSAIC, LLM-Auction (pCTR), LLM-Auction
(oracle) on the same held-out auctions (queries, candidates, bids, click-judge draws), plus the
monotonicity experiment at IRPO epoch 0 and at the last epoch.

    python experiments/reproduce_table2.py --work runs/table2 --out docs/results

Every step writes under --work and is skipped when its output exists, so an interrupted run
continues where it stopped (the IRPO runs resume at their interrupted phase). Both IRPO runs start
from one shared format warm start (docs/irpo.md): the oracle run resumes from a copy of the pCTR
run's epoch 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.tables import markdown_table, read_query_log  # noqa: E402

# The CPU budget (about an hour on 2 cores); every value can be changed with --set.
CPU_SETTINGS = [
    "data.profiles=40", "ad_sampling.max_new_tokens=96",
    "irpo.epochs=2", "irpo.train_queries=24", "irpo.samples_per_query=4",
    "irpo.candidates_per_prompt=5", "irpo.test_queries=32",
    "irpo.max_pairs=32", "warmstart.queries=64", "dpo.learning_rate=2e-4",
    "mechanisms.mosaic_samples=5",
]
PAPER = {  # Table 2 of the paper (Qwen3-4B): 125.28 / 46.88, 125.28 / 73.29, 54.13 / 24.95
    "revenue_vs_pretrained": 2.672, "revenue_vs_mosaic": 1.709, "reward_vs_mosaic": 2.17}


def log(text: str) -> None:
    print(f"[table2 {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def expected_revenue(folder: Path) -> float:
    """Mean over queries of sum of bid x click probability of the exposed ads (the judge's
    probabilities): the revenue the realised clicks estimate, without their sampling noise."""
    q = read_query_log(folder / "queries.parquet")
    total = 0.0
    for bids, probs, exposed in zip(q["bids"], q["click_probabilities"], q["exposed"]):
        total += sum(bids[i] * probs.get(i, 0.0) for i in exposed)
    return total / len(q)


def row(name: str, folder: Path, note: str = "") -> dict:
    s = json.loads((folder / "summary.json").read_text())
    return {"method": name, "revenue_per_query": s["revenue_per_query"],
            "expected_revenue_per_query": expected_revenue(folder),
            "reward_per_query": s["reward_per_query"], "ctr": s["ctr"],
            "ads_per_response": s["ads_per_response"],
            "format_error_rate": s["format_error_rate"], "note": note}


def policy_lm(config: RunConfig, paths: dict):
    """A generator over a saved policy (model folder and/or adapter)."""
    from llmauction_sim.lm.hf import load_language_model

    model = dataclasses.replace(config.ad_llm, name=paths["checkpoint"] or config.ad_llm.name,
                                adapter=paths["adapter"])
    return load_language_model(model, seed=config.seed)


def fork_epoch0(src: Path, dst: Path) -> None:
    """Start `dst` from `src`'s warm start and epoch-0 evaluation (resumed by run_irpo)."""
    if (dst / "state.json").is_file():
        return
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "epoch-0", dst / "epoch-0", dirs_exist_ok=True)
    epochs = pd.read_parquet(src / "epochs.parquet")
    epochs[epochs["epoch"] == 0].to_parquet(dst / "epochs.parquet", index=False)
    state = json.loads((src / "state.json").read_text())
    (dst / "state.json").write_text(json.dumps(
        {"epoch": 0, "phase": "evaluate", "seconds": {"0": state["seconds"]["0"]}}))


def ratio(a, b) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def main(argv=None) -> int:
    from llmauction_sim.data import build_dataset
    from llmauction_sim.evaluation import bid_sweep, evaluate
    from llmauction_sim.learning.irpo import policy_paths, run_irpo
    from llmauction_sim.lm.hf import load_language_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/table2", help="run folders (resumable)")
    parser.add_argument("--out", default="docs/results", help="where table2.md/csv go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--monotonicity-queries", type=int, default=8)
    parser.add_argument("--monotonicity-repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="on top of the CPU settings")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed).with_overrides(CPU_SETTINGS + args.overrides)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings = work / "timings.json"  # kept across resumed runs
    times: dict[str, float] = json.loads(timings.read_text()) if timings.is_file() else {}
    data = work / "data"
    if not (data / "queries.parquet").is_file():
        log(f"building {config.data.profiles} profiles' queries with the User-LLM")
        build_dataset(config, data, progress=False)
    n_test = config.irpo.test_queries

    def timed(name, fn, *fargs, **kwargs):
        start = time.perf_counter()
        out = fn(*fargs, **kwargs)
        times[name] = time.perf_counter() - start
        timings.write_text(json.dumps(times, indent=2))
        return out

    # IRPO with the learned pCTR reward (warm start, epoch 0, epochs 1..E).
    pctr_dir = work / "irpo-pctr"
    state = pctr_dir / "state.json"
    done = (json.loads(state.read_text()) if state.is_file() else {})
    if done.get("epoch") != config.irpo.epochs or done.get("phase") != "evaluate":
        log("IRPO (pCTR reward)")
        timed("irpo_pctr", run_irpo, config, pctr_dir, resume=state.is_file(), data=data,
              progress=False)
    oracle_dir = work / "irpo-oracle"
    oracle_cfg = config.with_overrides(["irpo.reward=oracle"])
    fork_epoch0(pctr_dir, oracle_dir)
    done = json.loads((oracle_dir / "state.json").read_text())
    if done.get("epoch") != config.irpo.epochs or done.get("phase") != "evaluate":
        log("IRPO (oracle reward)")
        timed("irpo_oracle", run_irpo, oracle_cfg, oracle_dir, resume=True, data=data,
              progress=False)

    # Baselines on the same test auctions.
    base_lm = load_language_model(config.ad_llm, seed=config.seed)
    warm_lm = policy_lm(config, {"checkpoint": str(pctr_dir / "epoch-0" / "policy"),
                                 "adapter": None})
    for name, mechanism, lm in (("pretrained", "pretrained", base_lm),
                                ("mosaic", "mosaic", base_lm),
                                ("mosaic-warm", "mosaic", warm_lm)):
        folder = work / name
        if not (folder / "summary.json").is_file():
            log(f"evaluating {name}")
            timed(name, evaluate, config, mechanism, n_test, folder, data, ad_lm=lm)

    last = config.irpo.epochs
    rows = [row("pre-trained", work / "pretrained", "untrained SmolLM2-135M, one pass"),
            row("MOSAIC", work / "mosaic",
                f"untrained model, M={config.mechanisms.mosaic_samples}"),
            row("MOSAIC (warm start)", work / "mosaic-warm",
                f"warm-started model, M={config.mechanisms.mosaic_samples}"),
            row("warm start (IRPO epoch 0)", pctr_dir / "epoch-0" / "eval",
                "format SFT only, one pass"),
            row("LLM-Auction (pCTR)", pctr_dir / f"epoch-{last}" / "eval",
                f"IRPO epoch {last}, one pass"),
            row("LLM-Auction (oracle)", oracle_dir / f"epoch-{last}" / "eval",
                f"IRPO epoch {last}, one pass")]
    table = pd.DataFrame(rows)

    # Monotonicity at epoch 0 and the last epoch (pCTR run).
    mono = {}
    for tag, paths in (("epoch0", {"checkpoint": str(pctr_dir / "epoch-0" / "policy"),
                                   "adapter": None}),
                       (f"epoch{last}", policy_paths(pctr_dir))):
        folder = work / f"monotonicity-{tag}"
        if not (folder / "summary.json").is_file():
            log(f"monotonicity at {tag}")
            lm = warm_lm if tag == "epoch0" else policy_lm(config, paths)
            timed(f"monotonicity_{tag}", bid_sweep, config, "pretrained", "monotonicity", folder,
                  test_queries=args.monotonicity_queries, repeats=args.monotonicity_repeats,
                  data=data, ad_lm=lm)
        mono[tag] = json.loads((folder / "summary.json").read_text())

    by = table.set_index("method")
    ours = {
        "revenue_vs_pretrained": ratio(by.loc["LLM-Auction (pCTR)", "revenue_per_query"],
                                       by.loc["pre-trained", "revenue_per_query"]),
        "revenue_vs_mosaic": ratio(by.loc["LLM-Auction (pCTR)", "revenue_per_query"],
                                   by.loc["MOSAIC", "revenue_per_query"]),
        "reward_vs_mosaic": ratio(by.loc["LLM-Auction (pCTR)", "reward_per_query"],
                                  by.loc["MOSAIC", "reward_per_query"]),
        "revenue_vs_mosaic_warm": ratio(by.loc["LLM-Auction (pCTR)", "revenue_per_query"],
                                        by.loc["MOSAIC (warm start)", "revenue_per_query"]),
        "revenue_vs_warm_start": ratio(by.loc["LLM-Auction (pCTR)", "revenue_per_query"],
                                       by.loc["warm start (IRPO epoch 0)", "revenue_per_query"]),
        "expected_revenue_vs_warm_start": ratio(
            by.loc["LLM-Auction (pCTR)", "expected_revenue_per_query"],
            by.loc["warm start (IRPO epoch 0)", "expected_revenue_per_query"]),
    }
    epochs = {kind: pd.read_parquet(d / "epochs.parquet")
              for kind, d in (("pctr", pctr_dir), ("oracle", oracle_dir))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table2.csv", index=False)
    mono_rows = pd.DataFrame([{"policy": tag, **{f"clicks_{k}": v for k, v in s["clicks"].items()},
                               **{f"itctr_{k}": v for k, v in s["itctr"].items()},
                               "answers": s["answers"]} for tag, s in mono.items()])
    for tag in mono:
        shutil.copy(work / f"monotonicity-{tag}" / "curve.png",
                    out / f"table2_monotonicity_{tag}.png")
    result = {"command": "python experiments/reproduce_table2.py " + shlex.join(sys.argv[1:]),
              "settings": CPU_SETTINGS + args.overrides, "ours": ours, "paper": PAPER,
              "seconds": times}
    (out / "table2.json").write_text(json.dumps(result, indent=2, default=float))
    cols = ["epoch", "revenue_per_query", "reward_per_query", "ctr", "format_error_rate",
            "pctr_auc", "dpo_loss", "dpo_reward_accuracy", "pairs", "kl_to_reference", "seconds"]
    text = [f"# Table 2 on the embedded model\n\n```\n{result['command']}\n```\n",
            "Settings on top of the defaults: `" + "`, `".join(result["settings"]) + "`.\n",
            "## Held-out auctions\n", markdown_table(table), "",
            "## Ratios (LLM-Auction with pCTR reward against the baselines)\n",
            markdown_table(pd.DataFrame([{"ratio": k, "ours": v, "paper": PAPER.get(k)}
                                   for k, v in ours.items()])), ""]
    for kind, frame in epochs.items():
        text += [f"## IRPO epochs ({kind} reward)\n",
                 markdown_table(frame[[c for c in cols if c in frame]]), ""]
    text += ["## Monotonicity (one ad per sample, bids 1, 10, ..., 100)\n", markdown_table(mono_rows),
             ""]
    (out / "table2.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
