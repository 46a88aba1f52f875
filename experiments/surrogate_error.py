"""The allocation surrogate against fresh LLM rounds.

Runs the market with a given policy (e.g. an IRPO-trained one: --checkpoint RUN), fits the surrogate
on the first rounds and compares it with the later, fresh rounds at their own bids: exposure rate,
ITCTR, Brier score against the base rate, and a calibration table.

    python experiments/surrogate_error.py --checkpoint runs/table2/irpo-pctr --data runs/table2/data \
        --fit-rounds 6 --fresh-rounds 3 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.tables import read_query_log  # noqa: E402


def main(argv=None) -> int:
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.learning.irpo import resolve_policy
    from llmauction_sim.market import simulate
    from llmauction_sim.market.surrogate import (
        AllocationSurrogate,
        auctions_from_log,
        surrogate_error,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="policy for llm_auction (IRPO run, adapter, model)")
    parser.add_argument("--data", help="a `data build` folder")
    parser.add_argument("--fit-rounds", type=int, default=6)
    parser.add_argument("--fresh-rounds", type=int, default=3)
    parser.add_argument("--queries-per-step", type=int, default=8)
    parser.add_argument("--work", default="runs/surrogate-error")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args(argv)

    steps = args.fit_rounds + args.fresh_rounds
    overrides = [f"market.steps={steps}", f"market.queries_per_step={args.queries_per_step}",
                 "market.mechanism=llm_auction", "ad_sampling.max_new_tokens=96"]
    if args.checkpoint:
        overrides += [f"mechanisms.llm_auction.{k}={v}"
                      for k, v in resolve_policy(args.checkpoint).items() if v]
    if args.data:
        overrides.append(f"market.data={args.data}")
    config = RunConfig(seed=args.seed).with_overrides(overrides + args.overrides)
    work = Path(args.work)
    summary_file = work / "summary.json"
    if not summary_file.is_file():
        simulate(config, work, resume=(work / "config.json").is_file(), progress=False)
    log = read_query_log(work / "queries.parquet")
    ids = load_catalog(config.data.catalog).ids
    fit = auctions_from_log(log[log["step"] <= args.fit_rounds], ids)
    fresh = auctions_from_log(log[log["step"] > args.fit_rounds], ids)
    surrogate = AllocationSurrogate(len(ids)).fit(fit)
    err = surrogate_error(surrogate, fresh)
    err.update(fit_rows=surrogate.rows, coef_rank=float(surrogate.coef[0]),
               coef_log_bid=float(surrogate.coef[1]), coef_bid_share=float(surrogate.coef[2]),
               coef_log_max_other=float(surrogate.coef[3]))
    command = "python experiments/surrogate_error.py " + shlex.join(sys.argv[1:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "surrogate_error.json").write_text(json.dumps({"command": command, **err}, indent=2))
    rows = "\n".join(f"| {r['bin']} | {r['rows']} | {r['predicted_exposure']:.3f} | "
                     f"{r['observed_exposure']:.3f} |" for r in err["calibration"])
    text = (f"# Allocation surrogate against fresh LLM rounds\n\n```\n{command}\n```\n\n"
            f"Fitted on {args.fit_rounds} LLM rounds ({err['fit_rows']} candidate slots), compared "
            f"with {args.fresh_rounds} fresh rounds ({err['rows']} candidate slots) at their own "
            "bids.\n\n| metric | surrogate | fresh LLM rounds |\n|---|---|---|\n"
            f"| exposure rate | {err['predicted_exposure_rate']:.3f} | "
            f"{err['observed_exposure_rate']:.3f} |\n"
            f"| ITCTR | {err['predicted_itctr']:.4f} | {err['observed_itctr']:.4f} |\n\n"
            f"Brier score of exposures {err['brier']:.4f} (base rate {err['brier_base_rate']:.4f});"
            f" ITCTR mean absolute error {err['itctr_mae']:.4f}; calibration MAE "
            f"{err['calibration_mae']:.3f}. Coefficients: rank {err['coef_rank']:.3f}, "
            f"log(1+bid) {err['coef_log_bid']:.3f}, bid share {err['coef_bid_share']:.3f}, "
            f"log(1+max other bid) {err['coef_log_max_other']:.3f}.\n\n"
            "| bin | slots | predicted exposure | observed exposure |\n|---|---|---|---|\n"
            f"{rows}\n")
    (out / "surrogate_error.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
