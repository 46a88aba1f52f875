"""Sweeps: grid expansion, the three executors give identical summaries, failures, re-runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from llmauction_sim.cli import main
from llmauction_sim.config import ConfigError
from llmauction_sim.sweep import load_sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = """
kind = "equilibrium"
seeds = [0, 1]
max_workers = 2
[ray]
num_cpus = 2
[base]
rounds = 15
auctions_per_round = 200
[grid]
advertisers = ["vm:2,um:2", "um:3"]
mechanism = ["first_price", "second_price"]
"""


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    return path


def test_grid_times_seeds(sweep_file) -> None:
    sweep = load_sweep(sweep_file)
    assert len(sweep.runs) == 2 * 2 * 2
    assert sweep.runs[0].overrides == ("advertisers=vm:2,um:2", "mechanism=first_price")
    assert len({r.run_id for r in sweep.runs}) == 8


@pytest.mark.parametrize("text, message", [
    ('kind = "train"', "kind = 'train'"),
    ("seeds = []", "seeds must be a non-empty list"),
    ("colour = 1", "unknown keys ['colour']"),
    ('[grid]\nrounds = 3', "grid values must be non-empty lists"),
])
def test_bad_sweep_files(tmp_path, text, message) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sweep(path)


def test_executors_agree_and_reruns_skip(sweep_file, tmp_path) -> None:
    local = run_sweep(sweep_file, tmp_path / "local", executor="local")
    assert (local["status"] == "ok").all() and len(local) == 8
    process = run_sweep(sweep_file, tmp_path / "process", executor="process")
    pd.testing.assert_frame_equal(local, process)
    pytest.importorskip("ray")
    ray_table = run_sweep(sweep_file, tmp_path / "ray", executor="ray")
    pd.testing.assert_frame_equal(local, ray_table)

    marker = tmp_path / "local" / "runs" / local["run_id"][0] / "summary.json"
    stamp = marker.stat().st_mtime_ns
    again = run_sweep(sweep_file, tmp_path / "local", executor="local")
    pd.testing.assert_frame_equal(local, again)
    assert marker.stat().st_mtime_ns == stamp  # finished runs are not run again


def test_a_failed_run_is_recorded(tmp_path, capsys) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP.replace('["first_price", "second_price"]', '["first_price", "vcg2"]'))
    code = main(["sweep", str(path), "--out", str(tmp_path / "s"), "--executor", "local"])
    out = capsys.readouterr().out
    assert code == 1 and "4 of 8 runs ok" in out and "vcg2" in out
    table = pd.read_parquet(tmp_path / "s" / "summary.parquet")
    assert set(table["status"]) == {"ok", "failed"}
    for _, row in table.iterrows():
        error = tmp_path / "s" / "runs" / row["run_id"] / "error.txt"
        assert error.is_file() == (row["status"] == "failed")


def test_the_shipped_example_is_valid_and_named_by_the_readme() -> None:
    from llmauction_sim.config import RunConfig
    from llmauction_sim.market.agents import bid_policy_names
    from llmauction_sim.market.learners import population_factories
    from llmauction_sim.mechanisms import check_mechanism

    example = ROOT / "experiments" / "sweep.toml"
    sweep = load_sweep(example)
    assert sweep.kind == "simulate" and len(sweep.runs) == 8
    for spec in sweep.runs:
        config = RunConfig.from_dict(spec.base).with_overrides([*spec.overrides,
                                                                f"seed={spec.seed}"])
        check_mechanism(config.market.mechanism)
        bidding = config.market.bidding
        if ":" in bidding:
            population_factories(bidding, 100)  # the packaged catalog's 100 advertisers
        else:
            assert bidding in bid_policy_names()
    assert "sweep experiments/sweep.toml" in (ROOT / "README.md").read_text()
