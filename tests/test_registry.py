"""The shared name registry behind mechanisms, judges and bid policies."""

import pytest

from llmauction_sim.config import ConfigError
from llmauction_sim.registry import Registry


def test_register_get_aliases_and_errors() -> None:
    reg: Registry[int] = Registry("widget", "config: a.widget", aliases={"w": "wide"})
    reg.register("wide", 1)
    reg.register("narrow", 2)
    assert reg.names() == ["narrow", "wide"]
    assert reg.get("w") == 1 and reg.canonical("narrow") == "narrow"
    assert "w" in reg and "wide" in reg and "tall" not in reg
    with pytest.raises(ValueError, match=r"unknown widget 'wid' \(did you mean 'wide'\?\); "
                       r"choose one of narrow, wide; aliases: w \(config: a.widget\)"):
        reg.get("wid")
    reg.unregister("narrow")
    assert reg.names() == ["wide"]


def test_custom_error_type() -> None:
    reg: Registry[int] = Registry("policy", error=ConfigError)
    with pytest.raises(ConfigError, match="unknown policy 'x'"):
        reg.get("x")


def test_a_taken_name_is_refused_with_the_fix() -> None:
    reg: Registry[int] = Registry("widget", aliases={"w": "wide"})
    reg.register("wide", 1, "a wide one")
    with pytest.raises(ValueError, match=r"widget 'wide' is already registered \(by an "
                       r"earlier register\(\) call\); .*replace=True.*unregister\('wide'\) "
                       r"first"):
        reg.register("wide", 2)
    assert reg.get("wide") == 1
    reg.register("wide", 2, "wider", replace=True)
    assert reg.get("wide") == 2 and reg.describe() == {"wide": "wider"}
    reg.unregister("wide")
    reg.register("wide", 3, "again")
    with pytest.raises(ValueError, match="alias"):
        reg.register("w", 4, "an alias's name")


def test_descriptions_and_config_classes() -> None:
    from dataclasses import dataclass

    @dataclass
    class Settings:
        size: int = 1

    class Described:
        """First line.

        More text."""

    class WithAttributes:
        description = "from the attribute"
        config_class = Settings

    reg: Registry[object] = Registry("widget")
    reg.register("given", 1, "  one line  ", config_class=Settings)
    reg.register("docstring", Described)
    reg.register("attributes", WithAttributes)
    reg.register("bare", 2)
    assert reg.describe() == {"attributes": "from the attribute", "bare": "",
                              "docstring": "First line.", "given": "one line"}
    assert reg.entry("given").config_class is Settings
    assert reg.entry("attributes").config_class is Settings
    assert reg.entry("docstring").config_class is None
    with pytest.raises(ValueError, match="one line"):
        reg.register("two", 3, "two\nlines")
    with pytest.raises(TypeError, match="must be a dataclass"):
        reg.register("bad", 3, "x", config_class=dict)


def test_every_built_in_entry_is_described() -> None:
    import llmauction_sim
    from llmauction_sim.classic.auctions import CLASSIC_AUCTIONS
    from llmauction_sim.classic.bidding import CLASSIC_POLICIES

    for registry in (llmauction_sim.MECHANISMS, llmauction_sim.JUDGES,
                     llmauction_sim.BID_POLICIES, CLASSIC_AUCTIONS, CLASSIC_POLICIES):
        for name, text in registry.describe().items():
            assert text and "\n" not in text, (registry.kind, name)


def test_the_market_accepts_the_classic_policy_aliases() -> None:
    import numpy as np

    from llmauction_sim.classic.bidding import CLASSIC_POLICIES
    from llmauction_sim.config import RunConfig
    from llmauction_sim.market.agents import BID_POLICIES, check_bidding, make_bid_policy
    from llmauction_sim.market.learners import LearningBidder

    assert BID_POLICIES.aliases is CLASSIC_POLICIES.aliases  # one alias table
    market = RunConfig().with_overrides(["market.bidding=vm"]).market
    for alias, name in (("vm", "value_maximizer"), ("um", "utility_maximizer")):
        check_bidding(alias)
        by_alias = make_bid_policy(alias, market, 3.0, np.random.default_rng(0))
        by_name = make_bid_policy(name, market, 3.0, np.random.default_rng(0))
        assert isinstance(by_alias, LearningBidder) and by_alias.name == by_name.name == name
    check_bidding("vm:2,um:2")
    with pytest.raises(ConfigError, match="unknown bid policy 'vx'"):
        check_bidding("vx")
    # A settings table is named by the registered name, not an alias.
    tables = RunConfig().with_overrides(["bid_policies.vm.tau=2"]).bid_policies
    with pytest.raises(ConfigError, match=r"'vm' is an alias; name the table "
                       r"\[bid_policies.value_maximizer\]"):
        make_bid_policy("vm", market, 3.0, np.random.default_rng(0), tables)


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------

class FakeDistribution:
    name = "fake-plugin-dist"


class FakeEntryPoint:
    """What importlib.metadata.entry_points gives, with `load` counted."""

    def __init__(self, name: str, value: str, obj=None, error: Exception | None = None):
        self.name, self.value, self.group = name, value, "test.widgets"
        self.dist = FakeDistribution()
        self.obj, self.error, self.loads = obj, error, 0

    def load(self):
        self.loads += 1
        if self.error is not None:
            raise self.error
        return self.obj


@pytest.fixture
def plugins(monkeypatch):
    """Replaces the installed entry points of group 'test.widgets' with the list returned."""
    import importlib.metadata

    found: list[FakeEntryPoint] = []
    calls = []

    def entry_points(*, group):
        calls.append(group)
        return [ep for ep in found if ep.group == group]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return found, calls


def test_entry_points_are_found_on_first_lookup_and_loaded_on_use(plugins) -> None:
    found, calls = plugins

    def gadget(config):
        """A gadget from a plugin."""

    found.append(FakeEntryPoint("gadget", "fake_pkg:gadget", gadget))
    reg: Registry[object] = Registry("widget", group="test.widgets")
    reg.register("built_in", 1, "ours")
    assert calls == []  # registering looks nothing up
    assert reg.names() == ["built_in", "gadget"] and calls == ["test.widgets"]
    assert found[0].loads == 0 and "gadget" in reg  # listing imports no plugin
    assert reg.get("gadget") is gadget and found[0].loads == 1
    entry = reg.entry("gadget")
    assert entry.description == "A gadget from a plugin." and entry.source == "fake-plugin-dist"
    assert reg.get("gadget") is gadget and found[0].loads == 1 and calls == ["test.widgets"]
    with pytest.raises(ValueError, match=r"already registered \(by fake-plugin-dist\)"):
        reg.register("gadget", 2, "mine")


def test_a_broken_entry_point_names_its_distribution(plugins) -> None:
    from llmauction_sim.registry import PluginError

    found, _ = plugins
    found.append(FakeEntryPoint("broken", "fake_pkg.missing:factory",
                                error=ModuleNotFoundError("No module named 'fake_pkg.missing'")))
    reg: Registry[object] = Registry("widget", group="test.widgets")
    assert reg.names() == ["broken"]  # listing still works
    with pytest.raises(PluginError, match=r"could not load widget 'broken' from distribution "
                       r"fake-plugin-dist \(entry point 'broken = fake_pkg.missing:factory' in "
                       r"group 'test.widgets'\): ModuleNotFoundError: No module named"):
        reg.get("broken")


def max_bid(config):
    """An entry defined in this module."""


def test_a_plugin_may_not_take_a_registered_name(plugins) -> None:
    from llmauction_sim.registry import PluginError

    found, _ = plugins
    found.append(FakeEntryPoint("built_in", "fake_pkg:other", object()))
    reg: Registry[object] = Registry("widget", group="test.widgets")
    reg.register("built_in", max_bid, "ours")
    with pytest.raises(PluginError, match=r"widget 'built_in' of distribution fake-plugin-dist "
                       r".* clashes with the one registered by module test_registry; rename"):
        reg.names()


def test_a_plugin_module_that_registered_itself_is_not_a_clash(plugins) -> None:
    found, _ = plugins
    found.append(FakeEntryPoint("max_bid", f"{max_bid.__module__}:max_bid", max_bid))
    reg: Registry[object] = Registry("widget", group="test.widgets")
    reg.register("max_bid", max_bid)  # the plugin's module, imported earlier, registered it
    assert reg.names() == ["max_bid"] and reg.get("max_bid") is max_bid
    assert found[0].loads == 0


def test_the_package_exports_the_extension_api_cheaply() -> None:
    import subprocess
    import sys
    from importlib.metadata import version

    import llmauction_sim

    assert llmauction_sim.__version__ == version("llmauction-sim")
    for name in llmauction_sim.__all__:
        assert getattr(llmauction_sim, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        llmauction_sim.nope  # noqa: B018
    code = ("import sys, llmauction_sim; heavy = {'mesa', 'torch', 'numpy'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
