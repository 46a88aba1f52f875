"""How often does candidate retrieval offer an ad of the query's own topic?

For every query whose topic is a catalog category, checks whether an ad of that category is among
the top-K candidates, for several K and profile weights. Prints a table (and writes it as CSV with
--out). Uses a data folder from `llmauction data build`.

    python experiments/retrieval_recall.py --data data/small [--k 1 3 6 10] [--out recall.csv]
"""

from __future__ import annotations

import argparse

import pandas as pd

from llmauction_sim.data import load_dataset
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.domain.users import profiles_from_frame
from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder


def recall_table(data: str, ks: list[int], weights: list[float]) -> pd.DataFrame:
    catalog = load_catalog()
    profiles, queries = load_dataset(data)
    queries = queries[queries["topic"].isin(catalog.categories)]
    by_user = {p.user_id: p for p in profiles_from_frame(profiles)}
    users = [by_user[u] for u in queries["user_id"]]
    encoder = load_encoder()
    rows = []
    for w in weights:
        ranked = CandidateRetriever(catalog, encoder, "all", w).retrieve(users, list(queries["query"]))
        for k in ks:
            hits = [any(ad.category == topic for ad in ads[:k])
                    for ads, topic in zip(ranked, queries["topic"])]
            rows.append({"profile_weight": w, "k": k, "queries": len(hits),
                         "topic_recall": sum(hits) / max(len(hits), 1)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder from `llmauction data build`")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 6, 10])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.35, 0.7])
    parser.add_argument("--out", help="write the table as CSV")
    args = parser.parse_args()
    table = recall_table(args.data, args.k, args.weights)
    print(table.pivot(index="k", columns="profile_weight", values="topic_recall").round(3))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
