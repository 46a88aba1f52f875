"""The click-judge interface (the paper's User-LLM deciding clicks) and its registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmauction_sim.domain.catalog import Ad
from llmauction_sim.domain.mentions import Mention
from llmauction_sim.domain.users import UserProfile
from llmauction_sim.registry import Registry


@dataclass(frozen=True)
class ClickRequest:
    """One answered query: what the user saw. `exposed` are the validly inserted ads, in order."""

    profile: UserProfile
    query: str
    response: str
    exposed: tuple[Ad, ...]
    mentions: tuple[Mention, ...] = ()  # the valid mentions behind `exposed` (positions in text)


@dataclass(frozen=True)
class ClickDecision:
    """The user's clicks on one response.

    `clicked` is a subset of the exposed IDs. `probabilities` holds the judge's click probability
    per exposed ad where it has one (used for AUC and as a pCTR-like signal). `malformed` is True
    when the judge's output could not be read and its stated fallback rule decided instead.
    """

    clicked: tuple[str, ...]
    probabilities: dict[str, float] = field(default_factory=dict)
    malformed: bool = False


class ClickJudge:
    """Base class of click judges: subclass it, implement `judge`, register a factory."""

    name: str = ""
    description: str = ""  # one line, shown by `judge_descriptions()`
    config_class: type | None = None  # dataclass of the judge's own settings, if any

    def judge(self, requests: Sequence[ClickRequest], rng: np.random.Generator
              ) -> list[ClickDecision]:
        """Decide clicks for every request in ONE batched model call; draws only from `rng`."""
        raise NotImplementedError(f"{type(self).__name__} must implement judge()")


class ClickModel(ClickJudge):
    """A judge that also gives a click probability per exposed ad without drawing clicks (what
    the pCTR-based mechanisms need; a judge without `probabilities` cannot serve as pCTR)."""

    def probabilities(self, requests: Sequence[ClickRequest]) -> list[dict[str, float]]:
        """One {ad_id: P(click)} per request (empty when nothing is exposed); one model call."""
        raise NotImplementedError(f"{type(self).__name__} must implement probabilities()")


def keep_one_per_group(clicked: np.ndarray, probs: np.ndarray, compete: np.ndarray
                       ) -> np.ndarray:
    """At most one click among competing ads.

    `clicked` [n] bool (the independent draws), `probs` [n], `compete` [n, n] bool symmetric
    (True where two ads are similar). Clicked ads are visited in order of decreasing probability
    (the earlier exposed first on ties); one is kept unless it competes with an ad already kept.
    """
    keep = np.zeros(len(clicked), dtype=bool)
    for i in np.argsort(-np.asarray(probs), kind="stable"):
        if clicked[i] and not (compete[i] & keep).any():
            keep[i] = True
    return keep


JUDGES: Registry[Callable[..., ClickJudge]] = Registry(
    "click judge", "config: clicks.judge, CLI: --judge", group="llmauction_sim.judges")


def register_judge(name: str, factory: Callable[..., ClickJudge], description: str | None = None,
                   *, config_class: type | None = None, replace: bool = False) -> None:
    """Register `factory(config: RunConfig, **resources) -> ClickJudge` under `name`.

    `description` is one line (default: the factory's `description` attribute or docstring);
    `config_class` the dataclass of its own settings; a taken name needs `replace=True`.
    """
    JUDGES.register(name, factory, description, config_class=config_class, replace=replace)


def judge_names() -> list[str]:
    return JUDGES.names()


def judge_descriptions() -> dict[str, str]:
    """{name: one-line description} of every registered click judge."""
    return JUDGES.describe()


def check_judge(name: str) -> None:
    JUDGES.canonical(name)


def make_judge(name: str, config, **resources) -> ClickJudge:
    """Build the judge registered as `name`; an unknown name lists the known ones.

    `resources` (all optional) are `user_lm` (a `LanguageModel`), `encoder` (a `TextEncoder`) and
    `catalog`; a judge loads what it needs and was not given. A judge registered with a config
    class also gets ``settings=``, built from its table ``[clicks.<name>]``.
    """
    return JUDGES.build(name, config.clicks, "clicks", config, **resources)
