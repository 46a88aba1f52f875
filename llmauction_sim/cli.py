"""The `llmauction` command line. Every command takes --config FILE and --set section.field=value."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from llmauction_sim import __version__
from llmauction_sim.config import ConfigError, RunConfig, field_docs
from llmauction_sim.lm.registry import ModelNotFoundError

# Everything runs offline: models come from packages or local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_NO_HUB_BARS = "HF_HUB_DISABLE_PROGRESS_BARS"  # read when huggingface_hub/transformers load


@contextlib.contextmanager
def _library_bars_off():
    """--quiet also silences transformers' own bars ("Loading weights"): the environment
    variable covers a later import, the switch an earlier one; both are restored (tests call
    main() in one process)."""
    saved = os.environ.get(_NO_HUB_BARS)
    os.environ[_NO_HUB_BARS] = "1"
    hf_logging = sys.modules.get("transformers.utils.logging")
    was_on = hf_logging is not None and hf_logging.is_progress_bar_enabled()
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_NO_HUB_BARS, None)
        else:
            os.environ[_NO_HUB_BARS] = saved
        if was_on:
            hf_logging.enable_progress_bar()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called only when help is shown (so
    listing a registry costs nothing on an ordinary run)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _mechanisms_epilog() -> str:
    from llmauction_sim.mechanisms import mechanism_names

    return (f"registered mechanisms (--mechanism): {', '.join(mechanism_names())}; "
            "docs/mechanisms.md describes them")


def _say(args: argparse.Namespace, text: str) -> None:
    """A progress line on stderr, unless --quiet."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", type=Path, help="TOML file with config sections (see "
                       "`llmauction config show`), or a shipped one by name: paper_gpu, paper_gpu_smoke")
    group.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.FIELD=VALUE",
                       help="override one config field; repeatable, e.g. --set ad_sampling.top_k=50")
    group.add_argument("--seed", type=int, help="the one seed every random draw derives from")


def _resolve_config(args: argparse.Namespace, extra: list[str] = ()) -> RunConfig:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    overrides += list(extra)
    if args.config:
        from llmauction_sim.paths import shipped_config

        path = args.config
        if not Path(path).is_file() and shipped_config(str(path)):
            path = shipped_config(str(path))  # a config shipped with the package, by name
        return RunConfig.load(path, overrides)
    return RunConfig().with_overrides(overrides)


def _opt(name: str, value) -> list[str]:
    return [] if value is None else [f"{name}={value}"]


def _checkpoint_opts(args: argparse.Namespace) -> list[str]:
    """--checkpoint PATH (an IRPO run, an adapter or a model folder) as llm_auction settings."""
    if getattr(args, "checkpoint", None) is None:
        return []
    from llmauction_sim.learning.irpo_folder import resolve_policy

    try:
        policy = resolve_policy(args.checkpoint)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    return [f"mechanisms.llm_auction.{key}={value}" for key, value in policy.items() if value]


def _checkpoint_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="trained policy for --mechanism "
                        "llm_auction: an IRPO run folder (its newest policy), an adapter folder "
                        "or a model folder")


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------

def cmd_data_build(args: argparse.Namespace) -> int:
    from llmauction_sim.data import build_dataset

    config = _resolve_config(args, _opt("data.profiles", args.profiles)
                             + _opt("data.queries_per_profile", args.queries_per_profile)
                             + _opt("data.query_writer", args.writer))
    result = build_dataset(config, args.out, progress=not args.quiet)
    state = "reused existing build in" if result.reused else "wrote"
    print(f"{state} {result.out}: {result.num_profiles} profiles, {result.num_queries} queries "
          f"({result.seconds:.0f} s)")
    if result.short_profiles:
        print(f"note: {result.short_profiles} profiles got fewer than "
              f"{config.data.queries_per_profile} valid queries after "
              f"{config.data.max_attempts} attempts; rejected candidates: {result.rejected}")
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    import numpy as np

    from llmauction_sim.data import load_dataset
    from llmauction_sim.demo import answer_queries
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.lm.encoder import CandidateRetriever, load_encoder
    from llmauction_sim.mechanisms import check_mechanism

    config = _resolve_config(args, _opt("retrieval.num_candidates", args.num_candidates)
                             + _opt("market.mechanism", args.mechanism))
    check_mechanism(config.market.mechanism)
    if args.num_queries < 1:
        raise ConfigError(f"--num-queries = {args.num_queries} must be >= 1")
    profiles, queries = load_dataset(args.data)
    queries = queries[queries["split"] == args.split] if args.split != "all" else queries
    if queries.empty:
        raise ConfigError(f"{args.data} has no '{args.split}' queries; use --split all or "
                          "build more profiles")
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(queries), size=min(args.num_queries, len(queries)),
                                replace=False))
    queries = queries.iloc[chosen]
    catalog = load_catalog(config.data.catalog)
    retriever = CandidateRetriever(catalog, load_encoder(config.retrieval.encoder),
                                   config.retrieval.num_candidates,
                                   config.retrieval.profile_weight)
    _say(args, f"answering {len(queries)} queries with {config.market.mechanism} on "
               f"{config.ad_llm.name} in one batch (up to {config.ad_sampling.max_new_tokens} new "
               "tokens each)...")
    start = time.time()
    answers = answer_queries(config, retriever, catalog, profiles, queries, rng)
    seconds = time.time() - start
    _say(args, f"answered {len(answers)} queries in {seconds:.1f} s")
    for request, alloc in answers:
        print(f"\n=== {request.query_id} {request.profile.user_id} "
              f"({request.profile.describe()})")
        print(f"Q: {request.query}")
        print("candidates: " + ", ".join(f"{ad_id} bid {b:g}"
                                         for ad_id, b in request.bids.items()))
        print(f"A: {alloc.response}")
        issues = ", ".join(f"{k}={v}" for k, v in alloc.report.error_counts().items() if v)
        print(f"-> exposed: {list(alloc.exposed_ids) or 'none'}; format errors: "
              f"{issues or 'none'}; s_resp = {alloc.penalty:g}")
    ads = sum(a.report.num_ads for _, a in answers)
    errors = sum(a.report.num_errors for _, a in answers)
    print(f"\n{len(answers)} answers in {seconds:.1f} s: {ads} valid ad mentions, "
          f"{errors} format errors")
    return 0


def _simulate_config(args: argparse.Namespace) -> RunConfig:
    extra = (_opt("market.steps", args.steps) + _opt("market.queries_per_step", args.queries_per_step)
             + _opt("market.mechanism", args.mechanism) + _opt("clicks.judge", args.judge)
             + _opt("market.data", args.data) + _checkpoint_opts(args))
    stored = Path(args.out) / "config.json"
    if getattr(args, "resume", False) and stored.is_file() and not args.config:
        # Resume from the run's own config; flags may only extend the number of rounds.
        import json

        overrides = list(args.overrides) + extra
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        config = RunConfig.from_dict(json.loads(stored.read_text())).with_overrides(overrides)
    else:
        config = _resolve_config(args, extra)
    from llmauction_sim.clicks import judge_names
    from llmauction_sim.market.agents import check_bidding
    from llmauction_sim.mechanisms import check_mechanism

    check_mechanism(config.market.mechanism)
    check_bidding(config.market.bidding)
    if config.clicks.judge not in judge_names():
        raise ConfigError(f"clicks.judge = {config.clicks.judge!r} is not a click judge; choose "
                          f"one of {', '.join(judge_names())} (--judge NAME)")
    return config


def _print_summary(out: Path, summary: dict, answers: int = 0) -> None:
    from llmauction_sim.market.run import sample_answers

    keys = ("queries", "revenue_per_query", "reward_per_query", "ctr", "ads_per_response",
            "format_error_rate", "no_ad_rate")
    print("\nsummary (" + str(out / "summary.json") + "):")
    for key in keys:
        value = summary[key]
        print(f"  {key:>18}: {'n/a' if value is None else round(value, 3)}")
    for _, row in sample_answers(out, answers).iterrows() if answers else []:
        bids = ", ".join(f"{ad_id} {bid:g}" for ad_id, bid in row["bids"].items())
        print(f"\n--- {row['query_id']} (round {row['step']}), bids: {bids}")
        print(f"Q: {row['query']}")
        print(f"A: {row['response']}")
        print(f"-> exposed {list(row['exposed']) or 'none'}, clicked "
              f"{list(row['clicked']) or 'none'}, revenue {row['revenue']:g}")


def cmd_simulate(args: argparse.Namespace) -> int:
    from llmauction_sim.market import simulate

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps = {args.steps} must be >= 1")
    if args.queries_per_step is not None and args.queries_per_step < 1:
        raise ConfigError(f"--queries-per-step = {args.queries_per_step} must be >= 1")
    config = _simulate_config(args)
    summary = simulate(config, args.out, resume=args.resume, progress=not args.quiet)
    _print_summary(Path(args.out), summary, answers=args.show_answers)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llmauction_sim.market import simulate
    from llmauction_sim.market.run import NO_AD_NOTE

    args.resume = True  # rerunning the demo reuses a finished run with the same settings
    config = _simulate_config(args)
    print(f"demo: {config.market.steps} rounds x {config.market.queries_per_step} queries on "
          f"{config.ad_llm.name} (mechanism {config.market.mechanism}, judge "
          f"{config.clicks.judge}) into {args.out}")
    summary = simulate(config, args.out, resume=(Path(args.out) / "config.json").is_file(),
                       progress=not args.quiet)
    _print_summary(Path(args.out), summary, answers=2)
    if not summary["exposures"]:
        print(f"\nnote: {NO_AD_NOTE}.")
    if config.market.mechanism != BID_BLIND:
        _print_bid_awareness(config, Path(args.out), quiet=args.quiet)
    return 0


BID_BLIND = "llm_auction"  # untrained: pi_0 in one pass, which ignores the bids


def _print_bid_awareness(config: RunConfig, out: Path, quiet: bool) -> None:
    """The run's mechanism against the bid-blind pi_0 on the same queries and bids."""
    from llmauction_sim.demo import headline, replay
    from llmauction_sim.tables import read_query_log

    if not quiet:
        print(f"\nreplaying the same {config.market.steps * config.market.queries_per_step} "
              f"auctions through {BID_BLIND} (pi_0 in one pass, bid-blind) ...", file=sys.stderr)
    rows = {config.market.mechanism: headline(read_query_log(out / "queries.parquet")),
            f"{BID_BLIND} (bid-blind)": headline(replay(config, out, BID_BLIND))}
    print("\nsame queries and bids:")
    print(f"  {'mechanism':<28} {'top bid shown':>13} {'revenue/query':>13} "
          f"{'E[revenue]/query':>16} {'ads/answer':>10}")
    for name, h in rows.items():
        print(f"  {name:<28} {h['top_bid_shown']:>13.0%} {h['revenue_per_query']:>13.2f} "
              f"{h['expected_revenue_per_query']:>16.2f} {h['ads_per_answer']:>10.2f}")
    print("(top bid shown: share of answers that mention the auction's highest bidder; "
          "E[revenue]: bid x the click model's probability, summed over shown ads)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from llmauction_sim.evaluation import evaluate, evaluate_many
    from llmauction_sim.mechanisms import check_mechanism

    names = [n.strip() for n in args.mechanism.split(",") if n.strip()]
    for name in names:
        check_mechanism(name)
    config = _resolve_config(args, [f"market.mechanism={names[0]}", *_checkpoint_opts(args)])
    if len(names) > 1:
        evaluate_many(config, names, args.test_queries, args.out, args.data,
                      progress=lambda text: _say(args, text))
        print((Path(args.out) / "comparison.md").read_text())
        return 0
    summary = evaluate(config, names[0], args.test_queries, args.out, args.data)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_bid_sweep(args: argparse.Namespace) -> int:
    import json

    from llmauction_sim.evaluation import bid_sweep
    from llmauction_sim.mechanisms import check_mechanism

    check_mechanism(args.mechanism)
    config = _resolve_config(args, [f"market.mechanism={args.mechanism}",
                                    *_checkpoint_opts(args)])
    bids = None
    if args.bids is not None:
        try:
            bids = [float(b) for b in args.bids.split(",")]
        except ValueError:
            raise ConfigError(f"--bids {args.bids}: give comma-separated numbers, e.g. "
                              "--bids 1,10,50,100") from None
    summary = bid_sweep(config, args.mechanism, args.mode, args.out,
                        test_queries=args.test_queries, repeats=args.repeats, bids=bids,
                        data=args.data)
    print(json.dumps({k: v for k, v in summary.items() if k != "bids"}, indent=2))
    return 0


def cmd_irpo(args: argparse.Namespace) -> int:
    from llmauction_sim.learning.irpo import run_irpo

    for flag, value in (("--epochs", args.epochs), ("--train-queries", args.train_queries),
                        ("--test-queries", args.test_queries)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} = {value} must be >= 1")
    config = _resolve_config(args, _opt("irpo.epochs", args.epochs)
                             + _opt("irpo.train_queries", args.train_queries)
                             + _opt("irpo.test_queries", args.test_queries))
    epochs = run_irpo(config, args.out, resume=args.resume, progress=not args.quiet,
                      data=args.data)
    columns = [c for c in ("epoch", "revenue_per_query", "reward_per_query", "ctr",
                           "format_error_rate", "pctr_auc", "dpo_loss", "pairs") if c in epochs]
    print(epochs[columns].to_string(index=False))
    print(f"\nrun folder: {args.out} (epochs.parquet, summary.json, epoch-*/)\n"
          f"evaluate the trained policy: llmauction evaluate --mechanism llm_auction "
          f"--checkpoint {args.out} --out EVAL_DIR")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from llmauction_sim.sweep import describe, run_sweep

    table = run_sweep(args.sweep, args.out, executor=args.executor)
    print(describe(table))
    print(f"summary: {Path(args.out) / 'summary.parquet'}")
    return 0 if (table["status"] == "ok").all() else 1


def cmd_equilibrium(args: argparse.Namespace) -> int:
    from llmauction_sim.equilibrium import run_equilibrium_command

    return run_equilibrium_command(args, lambda: _resolve_config(args, _checkpoint_opts(args)))


def cmd_config_show(args: argparse.Namespace) -> int:
    import tomli_w

    config = _resolve_config(args)
    data = {k: v for k, v in config.to_dict().items()}
    print(tomli_w.dumps(_drop_none(data)), end="")
    return 0


def _drop_none(data):
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data


def config_reference() -> str:
    """Markdown reference of every config field, generated from the dataclasses' help texts."""
    lines = ["# Configuration reference", "",
             "Generated by `llmauction config docs` from the config dataclasses; do not edit.",
             "Set a field in a TOML file (`[section]` then `field = value`) or on the command "
             "line with `--set section.field=value`. Each mechanism, click judge and bid policy "
             "has the table of its name (`[mechanisms.mosaic]`, `[clicks.embedding]`); a plugin's "
             "table holds the fields of its own config class (docs/extending.md). Fields that "
             "moved into those tables still load from old files and run folders under their old "
             "names (`mechanisms.mosaic_samples` is `mechanisms.mosaic.samples`).", "",
             "| field | type | default | meaning |", "|---|---|---|---|"]
    for name, tp, default, help_text in field_docs(RunConfig):
        tp = tp.replace(" | ", " or ")  # a pipe would split the Markdown table cell
        lines.append(f"| `{name}` | {tp} | `{default!r}` | {help_text} |")
    return "\n".join(lines) + "\n"


def cmd_config_docs(args: argparse.Namespace) -> int:
    print(config_reference(), end="")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from llmauction_sim.market.app import serve

    serve(_resolve_config(args), args.host, args.port, args.data)  # replaces this process
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from llmauction_sim.lm.registry import registered_models, resolve_model

    if args.prepare:
        print(resolve_model(args.prepare))
        return 0
    for name, spec in registered_models().items():
        print(f"{name}\t{spec.description}")
    return 0


def _run_args(parser: argparse.ArgumentParser, *, out: str = "output folder",
              default_out: Path | None = None, data: str | None = None,
              data_required: bool = False, resume: str | None = None,
              quiet: str | None = "no progress bars", config: bool = True) -> None:
    """The options the commands share, each defined here once: --out (required unless
    `default_out`), --data, --resume, --quiet and the configuration group; None leaves one out."""
    if default_out is None:
        parser.add_argument("--out", type=Path, required=True, help=out)
    else:
        parser.add_argument("--out", type=Path, default=default_out,
                            help=f"{out} (default {default_out})")
    if data is not None:
        parser.add_argument("--data", type=Path, required=data_required, help=data)
    if resume is not None:
        parser.add_argument("--resume", action="store_true", help=resume)
    if quiet is not None:
        parser.add_argument("--quiet", action="store_true", help=quiet)
    if config:
        _config_args(parser)


_SMALL_BUILD = "folder of `llmauction data build` (default: build a small one inside the run folder)"


def _market_args(parser: argparse.ArgumentParser, default_out: Path | None = None,
                 steps: int | None = None, resume: str | None = None) -> None:
    parser.epilog = _mechanisms_epilog
    parser.add_argument("--steps", type=int, default=steps,
                        help=f"rounds to simulate (default {steps or 'market.steps = 10'})")
    parser.add_argument("--queries-per-step", type=int,
                        help="queries per round, answered in one batch (default 8)")
    parser.add_argument("--mechanism", help="auction mechanism (default llm_auction_tilted)")
    parser.add_argument("--judge", help="click judge: embedding, llm or logprob")
    _run_args(parser, out="run folder", default_out=default_out, data=_SMALL_BUILD,
              resume=resume)


# --------------------------------------------------------------------------------------------------
# the parser: one function per command

def _add_data(sub) -> None:
    data = sub.add_parser("data", help="synthetic users and queries")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    build = data_sub.add_parser(
        "build", help="generate profiles and User-LLM queries",
        description="Generate profiles and their User-LLM queries; writes OUT/profiles.parquet "
        "and OUT/queries.parquet. Resumable, with no --resume flag: work is saved per chunk of "
        "profiles in OUT/.parts, and rerunning the same command after an interruption continues "
        "from there (a finished build with the same settings is reused). The User-LLM writes "
        "about one profile's 5 queries per 8 s on a 2-core CPU, so the default 3,000 profiles "
        "take roughly 6-7 hours there (an estimate); --writer template takes seconds.")
    build.add_argument("--profiles", type=int, help="number of profiles (default 3000)")
    build.add_argument("--queries-per-profile", type=int, help="queries per profile (default 5)")
    build.add_argument("--writer", choices=["llm", "template"],
                       help="query writer (default llm: the User-LLM)")
    _run_args(build)
    build.set_defaults(func=cmd_data_build)


def _add_answer(sub) -> None:
    answer = sub.add_parser("answer", help="answer queries with the Ad-LLM and parse its ads",
                            description="Answer queries from a data folder with the Ad-LLM "
                            "(candidates retrieved, bids uniform 1..100) and show the parsed "
                            "ad mentions.")
    answer.add_argument("--data", type=Path, required=True, help="folder from `data build`")
    answer.add_argument("--split", choices=["train", "test", "all"], default="test")
    answer.add_argument("--num-queries", type=int, default=4)
    answer.add_argument("--num-candidates", help="candidate ads per prompt, or 'all'")
    answer.add_argument("--mechanism", help="mechanism that answers (default: market.mechanism, "
                        "llm_auction_tilted)")
    answer.add_argument("--quiet", action="store_true", help="no progress lines or bars")
    _config_args(answer)
    answer.set_defaults(func=cmd_answer)


def _add_simulate(sub) -> None:
    simulate = sub.add_parser(
        "simulate", help="run the market for N rounds into a run folder",
        description="Run the stepped market (users ask, the mechanism answers and allocates ads, "
        "the User-LLM clicks, clicked ads pay) and write OUT/config.json, manifest.json, "
        "queries.parquet, metrics.parquet, advertisers.parquet, summary.json and metrics.png.")
    _market_args(simulate, resume="continue the interrupted run in --out (same settings)")
    _checkpoint_arg(simulate)
    simulate.add_argument("--show-answers", type=int, default=0, metavar="N",
                          help="print N answers of the run at the end")
    simulate.set_defaults(func=cmd_simulate)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="a small market on the embedded model (a few minutes)",
                          description="Run a small market on the embedded model and print its "
                          "summary and two answers; rerunning reuses the finished run.")
    _market_args(demo, default_out=Path("runs/demo"), steps=3)
    demo.set_defaults(func=cmd_demo)


def _add_config(sub) -> None:
    config = sub.add_parser("config", help="show the resolved config or the field reference")
    config_sub = config.add_subparsers(dest="config_command", required=True,
                                       metavar="SUBCOMMAND")
    show = config_sub.add_parser("show", help="print the resolved config as TOML")
    _config_args(show)
    show.set_defaults(func=cmd_config_show)
    docs = config_sub.add_parser("docs", help="print the field reference as Markdown")
    docs.set_defaults(func=cmd_config_docs)


def _add_evaluate(sub) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="compare mechanisms on the same test queries, bids and judge",
        description="Run a mechanism on N test queries (same queries, candidates, bids and "
        "click judge for every mechanism at a given seed) and write OUT/summary.json and "
        "OUT/queries.parquet. With several mechanisms (a,b,c) each runs into OUT/<name>/ and "
        "OUT/comparison.md holds the paired comparison with 95%% intervals: expected and "
        "realised revenue, the share of exposures that go to the top bid, Spearman of exposure "
        "against bid, format errors, and differences against the first mechanism "
        "(docs/mechanisms.md).")
    evaluate.epilog = _mechanisms_epilog
    evaluate.add_argument("--mechanism", required=True,
                          help="registered mechanism name, or several separated by commas")
    evaluate.add_argument("--test-queries", type=int, default=8,
                          help="test queries (default 8; >= 240 for intervals that separate "
                          "mechanisms)")
    _checkpoint_arg(evaluate)
    _run_args(evaluate, data="folder of `data build` (default: a template-written build "
              "inside --out)", quiet="no progress lines or bars")
    evaluate.set_defaults(func=cmd_evaluate)


def _add_irpo(sub) -> None:
    irpo = sub.add_parser(
        "irpo", help="train the Ad-LLM by IRPO (pCTR reward model + DPO), checkpointed",
        description="Iterative reward-preference optimisation: per epoch collect clicks with the "
        "current policy, refit the pCTR model, sample M answers per training prompt, build "
        "best-vs-worse pairs and run DPO; evaluate on held-out queries. Writes OUT/epochs.parquet "
        "and one folder per epoch; --resume restarts at the interrupted phase.")
    irpo.add_argument("--epochs", type=int, help="IRPO epochs (default irpo.epochs = 3)")
    irpo.add_argument("--train-queries", type=int, help="training auctions per epoch")
    irpo.add_argument("--test-queries", type=int, help="held-out auctions for evaluation")
    _run_args(irpo, out="run folder", data=_SMALL_BUILD, resume="continue the run in --out")
    irpo.set_defaults(func=cmd_irpo)


def _add_bid_sweep(sub) -> None:
    sweep = sub.add_parser(
        "bid-sweep", help="ITCTR and clicks of one ad as its bid varies",
        description="Monotonicity (one ad per test query, bids 1,10,...,100) or continuity (one "
        "query and ad, bids 1..100) experiment; writes OUT/curve.parquet, OUT/samples.parquet, "
        "OUT/curve.png and OUT/summary.json (Spearman correlation, violation rate).")
    sweep.add_argument("--mechanism", required=True, help="registered mechanism name")
    sweep.add_argument("--mode", choices=["monotonicity", "continuity"], required=True)
    sweep.add_argument("--test-queries", type=int, default=4,
                       help="samples of the monotonicity mode (default 4)")
    sweep.add_argument("--repeats", type=int, default=1, help="answers per bid (default 1)")
    sweep.add_argument("--bids", help="comma-separated bids (default: by mode)")
    _checkpoint_arg(sweep)
    _run_args(sweep, data="folder of `data build`", quiet=None)
    sweep.set_defaults(func=cmd_bid_sweep)


def _add_equilibrium(sub) -> None:
    equilibrium = sub.add_parser(
        "equilibrium", help="learning bidders on a classic auction or in the LLM market",
        description="Run value- and utility-maximizing bidders' learning dynamics and write "
        "OUT/rounds.parquet and OUT/summary.json. The mechanism's registry picks the dynamics. "
        "Classic auctions (first_price, second_price, gsp, or one added with "
        "register_classic_auction) also write OUT/market.parquet and OUT/config.json and take "
        "their settings from the config's classic section (e.g. --set classic.values.high=2). A "
        "market mechanism (pretrained, llm_auction, ...) runs the LLM market with the "
        "population as its advertisers (the catalog cut to their number) into OUT/market "
        "(e.g. --set market.surrogate_rounds=50).")
    equilibrium.add_argument("--mechanism", help="first_price, second_price, gsp, or a market "
                             "mechanism such as llm_auction (default classic.mechanism, "
                             "first_price)")
    equilibrium.add_argument("--advertisers", help="population, e.g. 'vm:4,um:4' or "
                             "'vm:2:tau=1.5,um:2:learner=best_response' (default vm:4,um:4)")
    equilibrium.add_argument("--rounds", type=int, help="learning rounds (default 300; LLM "
                             "rounds for market mechanisms, default 20)")
    equilibrium.add_argument("--auctions-per-round", type=int,
                             help="auctions per round (default 1000)")
    _checkpoint_arg(equilibrium)
    _run_args(equilibrium, resume="continue the interrupted (or extend the finished) run in "
              "--out")
    equilibrium.set_defaults(func=cmd_equilibrium)


def _add_sweep(sub) -> None:
    sweep = sub.add_parser(
        "sweep", help="run a grid or list of configs x seeds, each in its own run folder",
        description="Run every entry of SWEEP.toml and gather the runs' summaries into "
        "OUT/summary.parquet. Finished runs are skipped. docs/scaling.md describes the file "
        "format and the executors; experiments/sweep.toml is an example.")
    sweep.add_argument("sweep", type=Path, help="sweep file (TOML)")
    sweep.add_argument("--executor", choices=["local", "process", "ray"], default="process",
                       help="where runs execute (default process; ray needs the dist extra)")
    _run_args(sweep, out="sweep folder", quiet=None, config=False)
    sweep.set_defaults(func=cmd_sweep)


def _add_models(sub) -> None:
    models = sub.add_parser("models", help="list registered models or prepare one")
    models.add_argument("--prepare", metavar="NAME",
                        help="resolve NAME (converting the embedded model once) and print its "
                        "folder")
    models.set_defaults(func=cmd_models)


def _add_viz(sub) -> None:
    viz = sub.add_parser(
        "viz", help="the market in the browser (Mesa SolaraViz page)",
        description="Serve the market page (controls, plots, advertisers, conversations with "
        "highlighted ads) with Solara, offline; see docs/viz.md.")
    viz.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                     "127.0.0.1)")
    viz.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    viz.add_argument("--data", type=Path, help="folder of `data build` (default: a small "
                     "User-LLM build in the cache folder, made once)")
    _config_args(viz)
    viz.set_defaults(func=cmd_viz)


COMMANDS = (_add_data, _add_answer, _add_simulate, _add_demo, _add_config, _add_evaluate,
            _add_irpo, _add_bid_sweep, _add_equilibrium, _add_sweep, _add_models, _add_viz)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="llmauction", description="Simulate LLM-native ad auctions (LLM-Auction, IRPO).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet = _library_bars_off() if getattr(args, "quiet", False) else contextlib.nullcontext()
    try:
        with quiet:
            return args.func(args)
    except ConfigError as exc:
        print(f"llmauction: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, ModelNotFoundError) as exc:
        print(f"llmauction: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, a path that is a file ...
        logging.debug("file-system error", exc_info=True)
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"llmauction: error: {exc.strerror or exc}{where}; check that path (free space, "
              "permissions) and rerun; --resume continues an interrupted run", file=sys.stderr)
        return 2
    except MemoryError:
        print("llmauction: error: out of memory; use smaller settings (fewer advertisers, "
              "auctions, queries or a smaller batch)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmauction: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
