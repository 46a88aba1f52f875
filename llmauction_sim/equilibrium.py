"""`llmauction equilibrium`: learning bidders on a classic auction or in the LLM market.

One entry point, `run_equilibrium_command`, looks the mechanism up in the registries and runs the
dynamics of its kind:

- ``classic``: a name in the classic-auction registry (`classic.auctions.CLASSIC_AUCTIONS`: first
  price, second price, GSP, or one added with `register_classic_auction`) runs
  `classic.equilibrium` (numpy, thousands of auctions per round) from the run config's `classic`
  section;
- ``market``: a name in the market's mechanism registry (`mechanisms.register_mechanism`) runs
  `market.equilibrium` (the LLM market, optionally with IRPO inside it).

Both take one `RunConfig` (--config, --set, --seed), so one file can hold both.
"""

from __future__ import annotations

from collections.abc import Callable

from llmauction_sim.classic.auctions import CLASSIC_AUCTIONS, classic_auction_names
from llmauction_sim.classic.equilibrium import classic_config, run_classic_equilibrium
from llmauction_sim.classic.equilibrium import format_summary as classic_summary
from llmauction_sim.config import ConfigError, RunConfig

DEFAULT_MECHANISM = "first_price"


def market_mechanism_names() -> list[str]:
    # Imported here: the market's mechanisms load the language-model stack, which a classic run
    # never needs.
    from llmauction_sim.mechanisms import mechanism_names

    return mechanism_names()


def mechanism_kind(name: str) -> str:
    """'classic' or 'market': which registry holds `name`; a ConfigError naming both otherwise."""
    if name in CLASSIC_AUCTIONS:
        return "classic"
    market = market_mechanism_names()
    if name in market:
        return "market"
    raise ConfigError(f"--mechanism {name!r} is neither a classic auction "
                      f"({', '.join(classic_auction_names())}) nor a market mechanism "
                      f"({', '.join(market)})")


def _run_classic(args, run_config: Callable[[], RunConfig]) -> int:
    if args.checkpoint is not None:
        raise ConfigError("--checkpoint applies to LLM-market mechanisms (llm_auction), not "
                          f"to the classic {args.mechanism}")
    config = classic_config(run_config(), mechanism=args.mechanism,
                            advertisers=args.advertisers, rounds=args.rounds,
                            auctions_per_round=args.auctions_per_round)
    result = run_classic_equilibrium(config, args.out, resume=args.resume)
    print(classic_summary(result.summary))
    print(f"wrote {args.out}/rounds.parquet, market.parquet, summary.json, config.json")
    return 0


def _run_market(args, run_config: Callable[[], RunConfig]) -> int:
    # The LLM market's stack (torch, Mesa) loads only for a market run.
    from llmauction_sim.market.equilibrium import (
        format_summary,
        run_market_equilibrium,
    )
    from llmauction_sim.market.equilibrium import market_config as with_population

    if args.auctions_per_round is not None:
        raise ConfigError("--auctions-per-round is for classic mechanisms; in the LLM market use "
                          "--set market.queries_per_step=N (and market.surrogate_rounds=K)")
    config = with_population(run_config(), args.mechanism, args.advertisers or "vm:4,um:4",
                             args.rounds or 20)
    summary = run_market_equilibrium(config, args.out, resume=args.resume,
                                     progress=not args.quiet)
    print(format_summary(summary))
    print(f"wrote {args.out}/rounds.parquet, summary.json and the market run in "
          f"{args.out}/market")
    return 0


RUNNERS: dict[str, Callable[..., int]] = {"classic": _run_classic, "market": _run_market}


def run_equilibrium_command(args, run_config: Callable[[], RunConfig]) -> int:
    """Body of `llmauction equilibrium` (`args` from its parser): run the dynamics of the
    mechanism's kind. `run_config()` resolves the run config (--config, --set, --seed,
    --checkpoint); a classic run reads its `classic` section."""
    # Without --mechanism a classic run takes its config's classic.mechanism (default first_price).
    kind = mechanism_kind(args.mechanism or DEFAULT_MECHANISM)
    return RUNNERS[kind](args, run_config)
