"""The mechanism interface: (query, profile, candidates, bids) -> response + exposures; clicks ->
payments. Mechanisms are registered by name (``register_mechanism`` / ``make_mechanism``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from llmauction_sim.domain.catalog import Ad
from llmauction_sim.domain.mentions import MentionReport
from llmauction_sim.domain.payments import first_price_per_click
from llmauction_sim.domain.users import UserProfile
from llmauction_sim.registry import Registry


@dataclass(frozen=True)
class AuctionRequest:
    """One query's auction: the user, the question, the candidate ads and their bids."""

    query_id: str
    profile: UserProfile
    query: str
    candidates: tuple[Ad, ...]
    bids: Mapping[str, float]

    def candidate_titles(self) -> dict[str, str]:
        return {ad.id: ad.title for ad in self.candidates}


@dataclass(frozen=True)
class Allocation:
    """What the mechanism showed: the response, its parsed mentions, and its format penalty."""

    response: str
    report: MentionReport
    penalty: float

    @property
    def exposed_ids(self) -> tuple[str, ...]:
        return self.report.exposed_ids


class Mechanism:
    """Base class of auction mechanisms: subclass it, implement `allocate`, register a factory.

    Every hook the simulator uses is declared here with its default; `payments` charges first
    price per click (the paper's rule), so most mechanisms only allocate.
    """

    name: str = ""
    description: str = ""  # one line, shown by `mechanism_descriptions()`
    config_class: type | None = None  # dataclass of the mechanism's own settings, if any
    # Ad-LLM generations per query: the mechanism's cost, reported by `evaluate`.
    generations_per_query: int = 1
    # Name of the click model the mechanism's pCTR comes from; None when it uses none.
    pctr_model: str | None = None

    def allocate(self, requests: Sequence[AuctionRequest], rng: np.random.Generator
                 ) -> list[Allocation]:
        """Allocate every request in one batched model call; draws only from `rng`."""
        raise NotImplementedError(f"{type(self).__name__} must implement allocate()")

    def payments(self, request: AuctionRequest, allocation: Allocation,
                 clicked: Sequence[str]) -> dict[str, float]:
        """Payment per ad ID for the realised clicks: each click on a shown ad costs its bid."""
        exposed = set(allocation.exposed_ids)
        return first_price_per_click(request.bids, [c for c in clicked if c in exposed])


class FirstPricePerClick(Mechanism):
    """A mechanism with the paper's payment rule (each click costs the clicked ad its bid)."""


def ad_llm_and_catalog(config, ad_lm=None, catalog=None, model_config=None):
    """The resources every mechanism factory needs, loaded from `config` where not given."""
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.lm.registry import load_language_model

    if ad_lm is None:
        ad_lm = load_language_model(model_config or config.ad_llm, seed=config.seed,
                                    run_config=config)
    return ad_lm, catalog if catalog is not None else load_catalog(config.data.catalog)


def policy_config(config):
    """`config.ad_llm` with the Ad-LLM policy pi_0's adapter (`mechanisms.policy_adapter`): the
    policy of llm_auction (untrained), llm_auction_tilted, llm_auction_ranked, mosaic and
    pregen_gsp. A packaged adapter applies only to the model it was trained on; other models run
    as configured."""
    import dataclasses

    from llmauction_sim.lm.registry import packaged_adapter_base

    adapter = config.mechanisms.policy_adapter
    if not adapter:
        return config.ad_llm
    base = packaged_adapter_base(adapter)
    if base is not None and base != config.ad_llm.name:
        return config.ad_llm
    return dataclasses.replace(config.ad_llm, adapter=adapter)


def policy_lm_and_catalog(config, ad_lm=None, catalog=None):
    """(pi_0's LanguageModel, catalog): a given `ad_lm` is taken as pi_0 (IRPO and the joint
    schedule pass their current policy), else `policy_config(config)` is loaded."""
    return ad_llm_and_catalog(config, ad_lm, catalog, policy_config(config))


MECHANISMS: Registry[Callable[..., Mechanism]] = Registry(
    "mechanism", "config: market.mechanism, CLI: --mechanism", group="llmauction_sim.mechanisms")


def register_mechanism(name: str, factory: Callable[..., Mechanism], description: str | None = None,
                       *, config_class: type | None = None, replace: bool = False) -> None:
    """Register `factory(config: RunConfig, **resources) -> Mechanism` under `name`.

    `description` is one line (default: the factory's `description` attribute or docstring);
    `config_class` the dataclass of its own settings; a taken name needs `replace=True`.
    """
    MECHANISMS.register(name, factory, description, config_class=config_class, replace=replace)


def mechanism_names() -> list[str]:
    return MECHANISMS.names()


def mechanism_descriptions() -> dict[str, str]:
    """{name: one-line description} of every registered mechanism."""
    return MECHANISMS.describe()


def check_mechanism(name: str) -> None:
    MECHANISMS.canonical(name)


def make_mechanism(name: str, config, **resources) -> Mechanism:
    """Build the mechanism registered as `name`: ``factory(config, **resources)``, plus
    ``settings=`` (its table ``[mechanisms.<name>]``) when it was registered with a config class."""
    return MECHANISMS.build(name, config.mechanisms, "mechanisms", config, **resources)
