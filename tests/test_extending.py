"""docs/extending.md runs as written, and an installed plugin package is found through its entry
points (tests/plugins/llmauction_example_plugin, installed by `make install`)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import sys
import tomllib
import types
from pathlib import Path

import pytest

import llmauction_sim
from llmauction_sim import BID_POLICIES, JUDGES, MECHANISMS, BidPolicy, ClickJudge, Mechanism
from llmauction_sim.cli import build_parser, main

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
PLUGIN = "llmauction-example-plugin"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), re.S | re.M)


@pytest.fixture
def doc_module(monkeypatch, tmp_path):
    """A module namespace for the doc's code, run in a scratch folder; its registrations are
    removed afterwards."""
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("extending_doc")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    yield module
    for registry, name in ((MECHANISMS, "my_mechanism"), (BID_POLICIES, "my_bid_policy"),
                           (JUDGES, "my_judge")):
        registry.unregister(name)


def test_the_docs_examples_run(doc_module, tmp_path) -> None:
    blocks = code_blocks("python")
    assert len(blocks) == 4
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), doc_module.__dict__)

    ns = doc_module.__dict__
    assert issubclass(ns["HighestBids"], Mechanism) and issubclass(ns["ROIPacer"], BidPolicy)
    assert issubclass(ns["PositionJudge"], ClickJudge)
    assert MECHANISMS.entry("my_mechanism").config_class is ns["HighestBidsConfig"]
    assert llmauction_sim.bid_policy_descriptions()["my_bid_policy"] == \
        "paces a bid multiplier towards a target ROI"
    assert llmauction_sim.judge_descriptions()["my_judge"] == "position-biased clicks: base / k"

    run = tmp_path / "runs" / "extending"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["queries"] == 4
    import pandas as pd

    log = pd.read_parquet(run / "queries.parquet")
    # Two mentions per answer (mechanisms.my_mechanism.slots=2), of the highest bids, and no
    # format error.
    for exposed, bids in zip(log["exposed"], log["bids"]):
        bids = dict(bids)
        assert list(exposed) == sorted(bids, key=lambda ad: -bids[ad])[:2]
    assert (log["format_errors"] == 0).all()
    config = json.loads((run / "config.json").read_text())
    assert config["mechanisms"]["my_mechanism"] == {"slots": "2"}
    assert config["bid_policies"]["my_bid_policy"] == {"target": "1.2"}
    assert config["clicks"]["my_judge"] == {"base": "0.5"}


def test_the_docs_settings_tables_build_each_entrys_config(doc_module) -> None:
    from llmauction_sim import RunConfig, make_bid_policy, make_judge, make_mechanism
    from llmauction_sim.config import ConfigError

    for code in code_blocks("python")[:3]:  # the three definitions, without the run
        exec(compile(code, str(DOC), "exec"), doc_module.__dict__)
    (settings,) = [b for b in code_blocks("toml") if "[project]" not in b]
    config = RunConfig.from_dict(tomllib.loads(settings))
    assert make_mechanism("my_mechanism", config).slots == 2
    policy = make_bid_policy("my_bid_policy", config.market, 10.0, None, config.bid_policies)
    assert (policy.target, policy.step) == (1.2, 0.1)
    assert make_judge("my_judge", config).base == 0.5
    assert RunConfig.from_dict(config.to_dict()) == config  # config.json round trip

    for override, message in (
            ("mechanisms.my_mechansim.slots=2", "not registered"),
            ("mechanisms.my_mechanism.slot=2", "unknown config field 'mechanisms.my_mechanism.slot'"),
            ("mechanisms.my_mechanism.slots=two", "mechanisms.my_mechanism.slots: expected an "
                                                  "integer")):
        with pytest.raises(ConfigError, match=message):
            make_mechanism("my_mechanism", config.with_overrides([override]))
    with pytest.raises(ConfigError, match="has no settings"):
        make_mechanism("pretrained", config.with_overrides(["mechanisms.pretrained.x=1"]))


def test_the_docs_plugin_declaration_matches_the_registries(doc_module) -> None:
    for code in code_blocks("python")[:3]:  # the three definitions, without the run
        exec(compile(code, str(DOC), "exec"), doc_module.__dict__)
    (toml,) = [b for b in code_blocks("toml") if "[project]" in b]
    points = tomllib.loads(toml)["project"]["entry-points"]
    assert set(points) == {MECHANISMS.group, BID_POLICIES.group, JUDGES.group}
    for registry in (MECHANISMS, BID_POLICIES, JUDGES):
        for name, target in points[registry.group].items():
            module, obj = target.split(":")
            assert module == "my_pkg" and obj in doc_module.__dict__, target
            assert registry.get(name) is doc_module.__dict__[obj]  # what the script registered

    (console,) = code_blocks("console")
    parser = build_parser()
    for line in console.strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "llmauction"
        args = parser.parse_args(argv[1:])
        for name in args.mechanism.split(","):
            assert name in MECHANISMS
        assert getattr(args, "judge", None) in (None, *JUDGES.names())
        for override in args.overrides:
            if override.startswith("market.bidding="):
                assert override.split("=", 1)[1] in BID_POLICIES


def _plugin_installed() -> bool:
    try:
        importlib.metadata.distribution(PLUGIN)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_plugin = pytest.mark.skipif(not _plugin_installed(), reason=f"{PLUGIN} is not installed; "
                                  "`make install` installs it (tests/plugins/)")


@needs_plugin
def test_the_example_plugin_is_found_through_its_entry_points() -> None:
    for registry, name in ((MECHANISMS, "top_bid"), (BID_POLICIES, "constant_bid"),
                           (JUDGES, "always_first")):
        assert name in registry.names()
        entry = registry.entry(name)
        assert entry.source == PLUGIN and entry.description
    entry = MECHANISMS.entry("top_bid")
    assert entry.description == "mentions the top-bid candidate in a fixed sentence (no " \
        "language model)"
    assert entry.config_class.__name__ == "TopBidConfig"
    assert BID_POLICIES.entry("constant_bid").description == \
        "bids half the advertiser's value per click in every auction"


@needs_plugin
def test_the_plugin_mechanism_runs_in_evaluate_from_the_command_line(tmp_path, capsys) -> None:
    import pandas as pd

    out = tmp_path / "eval"
    status = main(["evaluate", "--mechanism", "top_bid", "--test-queries", "3", "--quiet",
                   "--set", "clicks.judge=always_first", "--set", "data.query_writer=template",
                   "--set", "data.profiles=12", "--set", "retrieval.num_candidates=4",
                   "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mechanism"] == "top_bid" and summary["judge"] == "always_first"
    assert summary["generations_per_query"] == 1 and "pctr_model" not in summary
    log = pd.read_parquet(out / "queries.parquet")
    assert len(log) == 3
    for exposed, clicked, bids, revenue in zip(log["exposed"], log["clicked"], log["bids"],
                                               log["revenue"]):
        bids = dict(bids)
        top = max(bids, key=lambda ad: (bids[ad], ad))
        assert list(exposed) == [top] and list(clicked) == [top] and revenue == bids[top]
    # The plugin's own settings table reaches it through the entry point.
    status = main(["evaluate", "--mechanism", "top_bid", "--test-queries", "1", "--quiet",
                   "--set", "mechanisms.top_bid.template=Try {mention}!",
                   "--set", "clicks.judge=always_first", "--set", "data.query_writer=template",
                   "--set", "data.profiles=12", "--set", "retrieval.num_candidates=4",
                   "--out", str(tmp_path / "eval2")])
    assert status == 0, capsys.readouterr().err
    (answer,) = pd.read_parquet(tmp_path / "eval2" / "queries.parquet")["response"]
    assert answer.startswith("Try @") and answer.endswith("]!")
