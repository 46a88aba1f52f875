"""Every registered mechanism on the same test auctions (queries, bids, click-judge draws).

Writes one table (Markdown and CSV) with the command that made it:

    python experiments/compare_mechanisms.py --test-queries 8 --data DIR --out docs/results
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.evaluation import evaluate  # noqa: E402
from llmauction_sim.lm.hf import load_language_model  # noqa: E402
from llmauction_sim.mechanisms import mechanism_names  # noqa: E402
from llmauction_sim.tables import markdown_table  # noqa: E402

COLUMNS = ("revenue_per_query", "reward_per_query", "ctr", "ads_per_response",
           "format_error_rate", "generations_per_query", "seconds_per_query")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-queries", type=int, default=8)
    parser.add_argument("--mechanisms", default=",".join(mechanism_names()))
    parser.add_argument("--data", help="a `data build` folder (default: built in the work dir)")
    parser.add_argument("--work", default="runs/compare-mechanisms", help="run folders")
    parser.add_argument("--out", default="docs/results", help="where the table goes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed).with_overrides(args.overrides)
    lm = load_language_model(config.ad_llm, seed=config.seed)
    work = Path(args.work)
    data = args.data
    rows = []
    for name in args.mechanisms.split(","):
        summary = evaluate(config, name, args.test_queries, work / name, data, ad_lm=lm)
        data = data or work / name / "data"  # the first run's build serves the others
        rows.append({"mechanism": name, **{c: summary.get(c) for c in COLUMNS}})
        print(f"{name}: {rows[-1]}", flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare_mechanisms.csv", index=False)
    command = "python experiments/compare_mechanisms.py " + shlex.join(sys.argv[1:])
    (out / "compare_mechanisms.md").write_text(
        f"# Mechanisms on the same test auctions\n\n```\n{command}\n```\n\n"
        + markdown_table(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
