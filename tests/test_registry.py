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
