"""How well does each click judge tell relevant ads from irrelevant ones (ROC AUC)?

Builds the labelled set of `llmauction_sim.clicks.labelled` (half the triples pair a user and a query
with an ad of the query's own topic, half with an ad of a category unrelated to both; the answers
weave the mention in the same way) and scores every triple with each judge: its click probability
where it has one (`probabilities`), else its click rate over `--samples` batched judge calls. Runs
on the configured models (default: the embedded SmolLM2-135M-Instruct and the packaged MiniLM).

    python experiments/judge_auc.py [--triples 200] [--seed 0] [--judges embedding,logprob,llm]
                                    [--samples 3] [--set clicks.embedding.bias=-4] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from llmauction_sim.clicks import judge_names, make_judge
from llmauction_sim.clicks.labelled import build_labelled_set, roc_auc
from llmauction_sim.config import RunConfig
from llmauction_sim.domain.catalog import load_catalog


def evaluate(judges: list[str], triples: int, seed: int, samples: int,
             overrides: list[str]) -> list[dict]:
    config = RunConfig().with_overrides(overrides)
    catalog = load_catalog(config.data.catalog)
    data = build_labelled_set(triples, seed, catalog)
    requests = [t.request for t in data]
    labels = np.array([t.label for t in data])
    resources: dict = {"catalog": catalog}
    rows = []
    for name in judges:
        start = time.perf_counter()
        if name in ("llm", "logprob") and "user_lm" not in resources:
            from llmauction_sim.clicks.llm import load_user_lm

            resources["user_lm"] = load_user_lm(config)
        if name == "embedding" and "encoder" not in resources:
            from llmauction_sim.lm.encoder import load_encoder

            resources["encoder"] = load_encoder(config.retrieval.encoder)
        judge = make_judge(name, config, **resources)
        load_s = time.perf_counter() - start
        rng = np.random.default_rng(seed)
        has_probabilities = hasattr(judge, "probabilities")
        repeats = 1 if has_probabilities else samples
        clicks = np.zeros(len(data))
        malformed = 0
        calls = []
        for _ in range(repeats):
            start = time.perf_counter()
            decisions = judge.judge(requests, rng)
            calls.append(time.perf_counter() - start)
            clicks += [t.ad.id in d.clicked for t, d in zip(data, decisions)]
            malformed += sum(d.malformed for d in decisions)
        clicks /= repeats
        if has_probabilities:
            scores = np.array([d.probabilities[t.ad.id] for t, d in zip(data, decisions)])
            score_kind = "probability"
        else:
            scores, score_kind = clicks, f"click rate over {repeats} calls"
        rows.append({
            "judge": name, "triples": len(data), "auc": round(roc_auc(labels, scores), 4),
            "scored_by": score_kind,
            "click_rate_relevant": round(float(clicks[labels == 1].mean()), 3),
            "click_rate_irrelevant": round(float(clicks[labels == 0].mean()), 3),
            "malformed_rate": round(malformed / (repeats * len(data)), 3),
            "seconds_per_call": round(float(np.mean(calls)), 2), "load_seconds": round(load_s, 1),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triples", type=int, default=200, help="labelled triples (half relevant)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the set and the click draws")
    parser.add_argument("--judges", default="embedding,logprob,llm",
                        help=f"comma-separated judge names ({', '.join(judge_names())})")
    parser.add_argument("--samples", type=int, default=3,
                        help="calls of a judge without probabilities (its click rate averages "
                        "over them); a judge with probabilities is called once")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="config override, e.g. clicks.embedding.bias=-4 (repeatable)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.judges.split(",") if n.strip()]
    rows = evaluate(names, args.triples, args.seed, max(1, args.samples), args.set)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
