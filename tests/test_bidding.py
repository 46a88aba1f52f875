"""Bidding policies and their learning dynamics against auction theory (seeded, tolerances stated)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmauction_sim.classic.bidding import (
    Bidders,
    FixedShading,
    PopulationEntry,
    RoundFeedback,
    ValueConfig,
    ValueSampler,
    make_policy,
    parse_population,
    register_policy,
)
from llmauction_sim.classic.equilibrium import run_equilibrium
from llmauction_sim.cli import main
from llmauction_sim.config import ConfigError


def test_parse_population_strings_and_dicts() -> None:
    assert parse_population("vm:4, um:2:learner=best_response, truthful") == [
        PopulationEntry("value_maximizer", 4), PopulationEntry(
            "utility_maximizer", 2, {"learner": "best_response"}),
        PopulationEntry("truthful", 1)]
    assert parse_population([{"type": "vm", "num_copies": 2, "params": {"tau": 2}}]) == [
        PopulationEntry("value_maximizer", 2, {"tau": 2})]
    for bad in ("vx:2", "vm:two", "", [{"kind": "vm"}]):
        with pytest.raises(ConfigError):
            parse_population(bad)
    with pytest.raises(ConfigError, match="tua"):
        make_policy("vm", 1, tua=2.0)


def test_registry_and_fixed_policies(monkeypatch) -> None:
    from llmauction_sim.classic import bidding

    monkeypatch.setattr(bidding.CLASSIC_POLICIES, "_entries",
                        dict(bidding.CLASSIC_POLICIES._entries))
    register_policy("half", lambda num, rng, grid: FixedShading(num, rng, grid, shading=0.5))
    bidders = Bidders(parse_population("half:2,fixed_bid:1:bid=0.3,truthful:1"),
                      np.random.default_rng(0))
    bidders.start_round()
    values = np.array([[1.0, 0.8, 0.9, 0.4]])
    np.testing.assert_allclose(bidders.bids(values), [[0.5, 0.4, 0.3, 0.4]])
    # The market's `fixed` means a bid drawn once per ad; a classic constant names its kind.
    with pytest.raises(ConfigError, match="fixed_"):
        parse_population("fixed:1")
    with pytest.raises(ConfigError, match="fixed_bid"):
        make_policy("fixed_bid", 1)


def test_equilibrium_dispatches_through_the_registries(monkeypatch) -> None:
    from llmauction_sim.classic import auctions
    from llmauction_sim.equilibrium import mechanism_kind

    monkeypatch.setattr(auctions.CLASSIC_AUCTIONS, "_entries",
                        dict(auctions.CLASSIC_AUCTIONS._entries))
    auctions.register_classic_auction("vickrey", auctions.second_price, pricing="second")
    assert mechanism_kind("vickrey") == mechanism_kind("gsp") == "classic"
    assert mechanism_kind("llm_auction") == "market"
    with pytest.raises(ConfigError, match="neither a classic auction.*vickrey"):
        mechanism_kind("dutch")


def test_values_are_seeded() -> None:
    a = ValueSampler(ValueConfig(), 3, np.random.default_rng(5)).draw(4)
    b = ValueSampler(ValueConfig(), 3, np.random.default_rng(5)).draw(4)
    np.testing.assert_array_equal(a, b)
    once = ValueSampler(ValueConfig(redraw="once", low=1, high=2), 3, np.random.default_rng(5))
    assert np.all(once.draw(5) == once.mean_values()) and np.all(once.mean_values() >= 1)
    with pytest.raises(ConfigError):
        ValueConfig(low=2.0, high=1.0)


def test_symmetric_first_price_um_learns_equilibrium_shading() -> None:
    """n = 4 Hedge learners, uniform values: shading -> (n-1)/n = 0.75 (tolerance 0.05; grid 0.02)."""
    summary = run_equilibrium("first_price", "um:4", rounds=200, auctions_per_round=400,
                              seed=0).summary
    shading = [a["mean_shading"] for a in summary["advertisers"]]
    assert np.mean(shading) == pytest.approx(0.75, abs=0.05)
    # Best response learners reach it too.
    summary = run_equilibrium("first_price", "um:3:learner=best_response", rounds=100,
                              auctions_per_round=400, seed=0).summary
    assert np.mean([a["mean_shading"] for a in summary["advertisers"]]) == pytest.approx(
        2 / 3, abs=0.05)


def test_revenue_equivalence_of_learned_first_price_and_truthful_second_price() -> None:
    """Learned first-price revenue (last 10% of rounds) vs truthful second price: both near
    (n-1)/(n+1) = 0.6 for n = 4, within 0.04 of each other."""
    fp = run_equilibrium("first_price", "um:4", 200, 400, seed=1).summary["revenue_last"]
    sp = run_equilibrium("second_price", "truthful:4", 20, 400, seed=1).summary["revenue"]
    assert sp == pytest.approx(0.6, abs=0.02)
    assert abs(fp - sp) < 0.04


@pytest.mark.parametrize("controller", ["dual", "pid"])
def test_value_maximizer_learns_value_over_tau(controller) -> None:
    """First price per click: the VM's multiplier -> 1/tau (tolerance 1%), ROI >= tau on average."""
    tau = 1.6
    summary = run_equilibrium("first_price", f"vm:3:tau={tau}:controller={controller},um:2",
                              rounds=150, auctions_per_round=300, seed=2).summary
    for a in summary["advertisers"][:3]:
        assert a["type"] == "value_maximizer"
        assert a["mean_shading"] == pytest.approx(1 / tau, rel=0.01)
        assert a["roi_last"] >= tau * 0.99
        assert a["roi"] >= tau * 0.97  # early rounds start at bid = value (ROI 1)


def test_value_maximizer_budget_pacing() -> None:
    """A binding budget per round: spend per round ends within 5% of the budget."""
    result = run_equilibrium("first_price", "vm:2:tau=1.0:budget=20,truthful:2", rounds=150,
                             auctions_per_round=200, seed=3)
    vm = result.rounds[(result.rounds["type"] == "value_maximizer")
                       & (result.rounds["round"] >= 120)]
    assert vm["budget_use"].mean() == pytest.approx(1.0, abs=0.05)
    assert vm["multiplier"].max() < 1.0  # budget, not ROI, binds


def test_hedge_regret_is_sublinear_against_stationary_opponents() -> None:
    """Against fixed opponents, regret per round of the Hedge learner shrinks as T grows
    (average regret at T is below half of that at T/8)."""
    result = run_equilibrium("first_price", "um:1,fixed_shading:3:shading=0.6", rounds=400,
                             auctions_per_round=200, seed=4)
    um = result.rounds[result.rounds["advertiser"] == 0].set_index("round")["cumulative_regret"]
    early, late = um[49] / 50, um[399] / 400
    assert late < 0.5 * early
    assert late >= -1e-9


def test_exp3_fallback_without_counterfactuals() -> None:
    policy = make_policy("um", 2, rng=np.random.default_rng(0))
    for _ in range(5):
        m = policy.start_round()
        assert m.shape == (2,) and np.all((m >= 0) & (m <= 1))
        policy.update(RoundFeedback(np.array([1.0, 0.5]), np.array([0.5, 0.1]),
                                    np.array([1.0, 1.0]), np.array([2.0, 2.0])))
    np.testing.assert_allclose(policy.probs.sum(axis=1), 1.0)


def test_same_seed_same_run() -> None:
    a = run_equilibrium("gsp", "vm:2,um:2", 20, 100, seed=7, slot_weights=(1.0, 0.5),
                        ctr_range=(0.2, 0.8))
    b = run_equilibrium("gsp", "vm:2,um:2", 20, 100, seed=7, slot_weights=(1.0, 0.5),
                        ctr_range=(0.2, 0.8))
    c = run_equilibrium("gsp", "vm:2,um:2", 20, 100, seed=8, slot_weights=(1.0, 0.5),
                        ctr_range=(0.2, 0.8))
    assert a.rounds.equals(b.rounds) and a.summary == b.summary
    assert not a.rounds.equals(c.rounds)


def test_cli_equilibrium_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "eq"
    code = main(["equilibrium", "--mechanism", "first_price", "--advertisers", "vm:2,um:2",
                 "--rounds", "10", "--auctions-per-round", "50", "--seed", "3", "--out", str(out),
                 "--set", "values.high=2"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [a["type"] for a in summary["advertisers"]] == ["value_maximizer"] * 2 + [
        "utility_maximizer"] * 2
    for key in ("id", "type", "value", "tau", "final_bid", "mean_shading", "roi", "utility",
                "violation_rate", "regret"):
        assert key in summary["advertisers"][0]
    assert summary["advertisers"][0]["value"] == pytest.approx(1.0)
    assert {"revenue", "welfare", "liquid_welfare"} <= set(summary)
    assert (out / "rounds.parquet").is_file() and (out / "market.parquet").is_file()
    assert "value_maximizer" in capsys.readouterr().out
    code = main(["equilibrium", "--mechanism", "dutch", "--out", str(out)])
    assert code == 2
    assert "neither a classic auction" in capsys.readouterr().err


def test_utility_maximizers_with_equal_values_bid_close_to_the_value() -> None:
    """Constant values, two Hedge learners on first price: the grid's equilibria are near 0.97
    (Bertrand); counting a tie as a sure win made the counterfactual reward shading to ~0.6."""
    summary = run_equilibrium("first_price", "um:2", rounds=200, auctions_per_round=20, seed=0,
                              values=ValueConfig(distribution="constant")).summary
    assert np.mean([a["mean_shading"] for a in summary["advertisers"]]) >= 0.9


@pytest.mark.parametrize("controller", ["dual", "pid"])
def test_value_maximizer_priced_out_at_the_start_recovers(controller) -> None:
    """A VM starting at m = 0.2 against constant bids 0.5 never wins at first; it must probe up,
    then settle at m = 1/tau = 0.8 (value 0.30 per auction) with ROI >= tau."""
    spec = f"vm:1:tau=1.25:initial_multiplier=0.2:controller={controller},fixed_bid:2:bid=0.5"
    result = run_equilibrium("first_price", spec, rounds=150, auctions_per_round=200, seed=5)
    vm = result.summary["advertisers"][0]
    assert vm["final_multiplier"] == pytest.approx(0.8, rel=0.02)
    assert vm["roi_last"] >= 1.25 * 0.99
    last = result.rounds[(result.rounds["advertiser"] == 0) & (result.rounds["round"] >= 135)]
    assert last["value"].mean() / 200 == pytest.approx(0.305, abs=0.03)
    again = run_equilibrium("first_price", spec, rounds=150, auctions_per_round=200, seed=5)
    assert again.rounds.equals(result.rounds)


def test_slower_hedge_step_decay_closes_the_gap_to_the_first_price_equilibrium() -> None:
    """n = 4, uniform values: the default anytime step (eta ~ t^-1/2) leaves Hedge's mixed play
    ~0.03 below (n-1)/n = 0.75 after 150 rounds; eta_decay = 0 (eta constant, the weights
    sharpen linearly in t) concentrates on the leader and halves the gap."""
    def gap(spec: str) -> float:
        summary = run_equilibrium("first_price", spec, rounds=150, auctions_per_round=200,
                                  seed=0).summary
        return 0.75 - float(np.mean([a["mean_shading"] for a in summary["advertisers"]]))

    default, sharp = gap("um:4"), gap("um:4:eta_decay=0")
    assert default > 0.02
    assert abs(sharp) < 0.6 * default
    with pytest.raises(ConfigError, match="eta_decay"):
        make_policy("um", 1, eta_decay=2.0)


def test_value_maximizer_probe_rule() -> None:
    """A round without a win raises m by (1 + probe) only when a higher bid would have paid off:
    the counterfactual shows a larger factor winning value within the ROI target, or, without
    counterfactuals, after `patience` idle rounds in a row; never above max_multiplier."""
    grid = np.array([0.25, 0.5, 1.0])
    zero = np.zeros(1)

    def idle_round(cf_value=None, cf_spend=None):
        return RoundFeedback(zero, zero, zero, np.ones(1), cf_value, cf_spend)

    vm = make_policy("vm", 1, grid=grid, tau=1.25, initial_multiplier=0.3, probe=0.1)
    vm.update(idle_round(np.array([[0.0, 1.0, 2.0]]), np.array([[0.0, 0.5, 2.0]])))
    assert vm.multiplier[0] == pytest.approx(0.33)                 # factor 0.5: ROI 2 >= 1.25
    vm.update(idle_round(np.array([[0.0, 1.0, 2.0]]), np.array([[0.0, 1.0, 2.0]])))
    assert vm.multiplier[0] == pytest.approx(0.33)                 # ROI 1 < 1.25: stay
    bandit = make_policy("vm", 1, grid=grid, initial_multiplier=9.0, probe=0.1, patience=3)
    for expected in (9.0, 9.0, 9.9, 10.0):
        bandit.update(idle_round())
        assert bandit.multiplier[0] == pytest.approx(expected)
