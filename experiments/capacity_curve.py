"""Can the embedded model learn to compare bids? Top-bid accuracy of SFT on top-bid answers against
the number of examples, by bid format, number of candidates and LoRA vs full fine-tuning.

    python experiments/capacity_curve.py --data data/q300 --work runs/capacity --out docs/results

Each condition fine-tunes the base model (from scratch) on answers that mention the TOP-BID
candidate ("For your question, @Title@[ID] is the one to look at."), the candidates listed in
retrieval order with bids drawn uniformly from 1..100 (distinct), then probes held-out test
auctions: at the fixed mention point ("For your question, @") every candidate's mention is scored
(teacher forcing) under each of K cyclic rotations of the bids, and the figures are the mass on the
top-bid candidate and how often it is the argmax, against chance 1/K, with 95% intervals over
auctions. It measures whether, and from what data size, the model reads bids at all: the learned
route (IRPO) cannot do better than this supervised upper bound. Results are appended per
condition to WORK/capacity.csv, so an interrupted run resumes; docs get capacity_curve.{csv,md,png}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmauction_sim.config import RunConfig  # noqa: E402

PREFIX = "For your question, @"
ANSWER = "For your question, @{title}@[{id}] is the one to look at."
# (examples, bid digits (0 = plain), candidates K, mode)
CONDITIONS = [(128, 3, 4, "lora"), (512, 3, 4, "lora"), (2048, 3, 4, "lora"),
              (512, 3, 2, "lora"), (512, 0, 4, "lora"), (512, 3, 4, "full")]
_TRAIN, _TEST = 61, 62


def auctions(config, data: Path, split: str, count: int, k: int, stream: int):
    """`count` auctions of `split` queries (cycled when fewer) with K retrieved candidates and
    distinct integer bids in 1..100."""
    from llmauction_sim.data import load_dataset
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.domain.users import profiles_from_frame
    from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder
    from llmauction_sim.mechanisms import AuctionRequest

    profiles, queries = load_dataset(data)
    queries = queries[queries["split"] == split]
    rng = np.random.default_rng([config.seed, stream, k])
    rows = queries.iloc[rng.permutation(len(queries))[np.arange(count) % len(queries)]]
    catalog = load_catalog(config.data.catalog)
    retriever = CandidateRetriever(catalog, load_encoder(config.retrieval.encoder), k,
                                   config.retrieval.profile_weight)
    by_user = {p.user_id: p for p in profiles_from_frame(profiles)}
    users = [by_user[u] for u in rows["user_id"]]
    texts = list(rows["query"])
    out = []
    for n, (qid, user, text, cands) in enumerate(zip(rows["query_id"], users, texts,
                                                     retriever.retrieve(users, texts))):
        bids = rng.choice(np.arange(1, 101), k, replace=False).astype(float)
        out.append(AuctionRequest(f"{qid}#{n}", user, text, tuple(cands),
                                  dict(zip((a.id for a in cands), bids))))
    return out


def top_bid_answer(request) -> str:
    top = max(request.candidates, key=lambda ad: request.bids[ad.id])
    return ANSWER.format(title=top.title, id=top.id)


def probe(lm, tests, prompt) -> dict:
    from llmauction_sim.lm.prompts import ad_llm_messages
    from llmauction_sim.mechanisms.tilted import mention_logprobs
    from llmauction_sim.probe import rotated_bids
    from llmauction_sim.statistics import mean_interval

    k = len(tests[0].candidates)
    asked = [rotated_bids(r, s) for r in tests for s in range(k)]
    log_q = mention_logprobs(lm, [ad_llm_messages(r.profile, r.query, r.candidates, r.bids, prompt)
                                  for r in asked], [PREFIX] * len(asked), asked,
                             [[a.id for a in r.candidates] for r in asked])
    mass, hit, first = [], [], []
    for r, lq in zip(asked, log_q):
        q = np.exp(lq - np.logaddexp.reduce(lq))
        top = int(np.argmax([r.bids[a.id] for a in r.candidates]))
        mass.append(q[top])
        hit.append(float(np.argmax(q) == top))
        first.append(q[0])
    per_auction = lambda x: np.asarray(x).reshape(len(tests), k).mean(1)  # noqa: E731
    rng = np.random.default_rng(0)
    return {"top_bid_mass": mean_interval(per_auction(mass), rng),
            "top_bid_accuracy": mean_interval(per_auction(hit), rng),
            "first_position_mass": mean_interval(per_auction(first), rng)}


def run_condition(config, data: Path, n: int, digits: int, k: int, mode: str, tests: int):
    from llmauction_sim.learning.warmstart import WarmStartExample, run_sft
    from llmauction_sim.lm.hf import TransformersLM, load_trainable
    from llmauction_sim.lm.prompts import ad_llm_messages

    overrides = [f"ad_prompt.bid_digits={digits}", f"retrieval.num_candidates={k}",
                 f"warmstart.lora={'true' if mode == 'lora' else 'false'}",
                 "warmstart.lora_r=16", "warmstart.epochs=1", "warmstart.batch_size=8",
                 f"warmstart.learning_rate={1e-3 if mode == 'lora' else 5e-5}"]
    if mode == "full":  # float32 master weights (bf16 autocast where native)
        overrides.append("ad_llm.dtype=float32")
    config = config.with_overrides(overrides)
    train = auctions(config, data, "train", n, k, _TRAIN)
    held_out = auctions(config, data, "test", tests, k, _TEST)
    examples = [WarmStartExample(list(ad_llm_messages(r.profile, r.query, r.candidates, r.bids,
                                                      config.ad_prompt)), top_bid_answer(r),
                                 ()) for r in train]
    model, tokenizer = load_trainable(config.ad_llm)
    start = time.perf_counter()
    result = run_sft(model, tokenizer, examples, config.warmstart, config.dpo)
    seconds = time.perf_counter() - start
    lm = TransformersLM(result.model, tokenizer, name="capacity")
    figures = probe(lm, held_out, config.ad_prompt)
    row = {"examples": n, "bid_format": f"fixed width {digits}" if digits else "plain", "k": k,
           "mode": mode, "chance": 1.0 / k, "train_seconds": round(seconds, 1),
           "loss_first": result.metrics["loss_first"], "loss_last": result.metrics["loss_last"],
           "test_auctions": tests}
    for name, iv in figures.items():
        row.update({name: iv.estimate, f"{name}_low": iv.low, f"{name}_high": iv.high})
    return row


def base_row(config, data: Path, digits: int, k: int, tests: int) -> dict:
    """The untrained model on the same probe (examples = 0)."""
    from llmauction_sim.lm.registry import load_language_model

    config = config.with_overrides([f"ad_prompt.bid_digits={digits}",
                                    f"retrieval.num_candidates={k}"])
    lm = load_language_model(config.ad_llm)
    figures = probe(lm, auctions(config, data, "test", tests, k, _TEST), config.ad_prompt)
    row = {"examples": 0, "bid_format": f"fixed width {digits}" if digits else "plain", "k": k,
           "mode": "none", "chance": 1.0 / k, "train_seconds": 0.0, "test_auctions": tests}
    for name, iv in figures.items():
        row.update({name: iv.estimate, f"{name}_low": iv.low, f"{name}_high": iv.high})
    return row


def report(table: pd.DataFrame, out: Path) -> None:
    from matplotlib.figure import Figure

    from llmauction_sim.tables import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "capacity_curve.csv", index=False)
    shown = table.assign(**{
        c: [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in
            zip(table[c], table[f"{c}_low"], table[f"{c}_high"])]
        for c in ("top_bid_mass", "top_bid_accuracy", "first_position_mass")})
    cols = ["examples", "bid_format", "k", "mode", "chance", "top_bid_mass", "top_bid_accuracy",
            "first_position_mass", "loss_last", "train_seconds"]
    (out / "capacity_curve.md").write_text(
        "# Capacity curve: top-bid accuracy of SFT on top-bid answers\n\n"
        "Generated by `experiments/capacity_curve.py`; 95% intervals over held-out auctions.\n\n"
        + markdown_table(shown[[c for c in cols if c in shown]]) + "\n")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for (fmt, k, mode), g in table.groupby(["bid_format", "k", "mode"]):
        g = g.sort_values("examples")
        if mode == "none":
            continue
        base = table[(table["examples"] == 0) & (table["bid_format"] == fmt) & (table["k"] == k)]
        g = pd.concat([base, g]).sort_values("examples")
        x = np.maximum(g["examples"], 32)
        ax.errorbar(x, g["top_bid_accuracy"], yerr=[g["top_bid_accuracy"] - g["top_bid_accuracy_low"],
                    g["top_bid_accuracy_high"] - g["top_bid_accuracy"]], marker="o", capsize=3,
                    label=f"{mode}, {fmt}, K={k}")
        ax.axhline(1.0 / k, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("SFT examples (32 = untrained)")
    ax.set_ylabel("top-bid accuracy (held out)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "capacity_curve.png", dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/capacity"))
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--test-auctions", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, nargs="*", help="indices of CONDITIONS to run")
    args = parser.parse_args(argv)
    config = RunConfig(seed=args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "capacity.csv"
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def done(n, fmt, k, mode):
        return len(table) and ((table["examples"] == n) & (table["bid_format"] == fmt)
                               & (table["k"] == k) & (table["mode"] == mode)).any()

    todo = [c for i, c in enumerate(CONDITIONS) if args.only is None or i in args.only]
    for digits, k in sorted({(d, k) for _, d, k, _ in todo}):
        fmt = f"fixed width {digits}" if digits else "plain"
        if not done(0, fmt, k, "none"):
            table = pd.concat([table, pd.DataFrame([base_row(config, args.data, digits, k,
                                                             args.test_auctions)])])
            table.to_csv(path, index=False)
    for n, digits, k, mode in todo:
        fmt = f"fixed width {digits}" if digits else "plain"
        if done(n, fmt, k, mode):
            continue
        print(f"condition: {n} examples, {fmt}, K={k}, {mode}", file=sys.stderr, flush=True)
        row = run_condition(config, args.data, n, digits, k, mode, args.test_auctions)
        print(row, file=sys.stderr, flush=True)
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        table.to_csv(path, index=False)
    report(table.reset_index(drop=True), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
