"""Every registered mechanism on the same test auctions (queries, candidates, bids, click model),
compared pairwise with 95% intervals (llmauction_sim/comparison.py).

    python experiments/compare_mechanisms.py --test-queries 240 --data DIR --out docs/results

Writes compare_mechanisms.md and .csv with the command that made them; the run folders (one per
mechanism, resumable by rerunning) stay under --work.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmauction_sim.comparison import comparison_markdown  # noqa: E402
from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.evaluation import evaluate_many  # noqa: E402
from llmauction_sim.mechanisms import mechanism_names  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-queries", type=int, default=240)
    parser.add_argument("--mechanisms", default=",".join(mechanism_names()),
                        help="comma-separated; the first is the reference of the paired "
                        "differences")
    parser.add_argument("--data", help="a `data build` folder (default: built in the work dir)")
    parser.add_argument("--work", default="runs/compare-mechanisms", help="run folders")
    parser.add_argument("--out", default="docs/results", help="where the table goes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)

    config = RunConfig(seed=args.seed).with_overrides(args.overrides)
    names = [n for n in args.mechanisms.split(",") if n]
    work = Path(args.work)
    table = evaluate_many(config, names, args.test_queries, work, args.data,
                          progress=lambda text: print(text, file=sys.stderr, flush=True))
    paired = pd.read_csv(work / "paired.csv")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "compare_mechanisms.csv", index=False)
    command = "python experiments/compare_mechanisms.py " + shlex.join(sys.argv[1:])
    (out / "compare_mechanisms.md").write_text(
        f"# Mechanisms on the same test auctions\n\n```\n{command}\n```\n\n"
        f"Settings on top of the defaults: {args.overrides or 'none'}.\n\n"
        + comparison_markdown(table, paired, names[0]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
