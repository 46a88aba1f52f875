"""pCTR for the baseline mechanisms, from a click model's probabilities (no clicks drawn).

A click model named by `mechanisms.pctr_model` (by default the click judge itself, which must
have probabilities: the transparent embedding judge or the log-probability judge) gives P(click)
of an ad in a given answer; a judge without probabilities is refused, not replaced. Before an
answer exists (the pre-generation auction) an ad's pCTR is its probability inside a short
templated sentence that weaves its mention in, so every candidate is scored on the same footing.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmauction_sim.clicks.base import ClickRequest, judge_names, make_judge
from llmauction_sim.config import ConfigError
from llmauction_sim.domain.mentions import render_mention

#: The sentence that carries an ad's mention when its pCTR is estimated before generation.
PCTR_TEMPLATE = ("For a question like yours, many people in a similar situation choose {mention} "
                 "because it fits what they need.")


#: Registered judges that only draw clicks: they give no probabilities to serve as pCTR.
NO_PROBABILITIES = ("llm",)


def _no_probabilities(wanted: str, name: str):
    return ConfigError(
        f"mechanisms.pctr_model = {wanted!r} resolves to the click judge {name!r}, which gives "
        "no click probabilities, so it cannot be the pCTR of mosaic, llm_auction_tilted or "
        "pregen_gsp; set mechanisms.pctr_model = 'embedding' (the MiniLM click model) or "
        "'logprob' (the User-LLM's P(yes)), or clicks.judge = 'embedding' or 'logprob'")


def pctr_model_name(config) -> str:
    """The click model that `mechanisms.pctr_model` names, checked against what can give pCTR.

    'judge' resolves to `clicks.judge`; a judge that only draws clicks (the 'llm' JSON judge)
    has no probabilities, and using another model in its place must be asked for by name.
    """
    wanted = config.mechanisms.pctr_model
    name = config.clicks.judge if wanted == "judge" else wanted
    if name in NO_PROBABILITIES:
        raise _no_probabilities(wanted, name)
    return name


def judge_as_pctr(config, judge):
    """The run's click judge when it is the configured pCTR model, else None (build that one).

    A caller's own judge object (not a registered name) stands for `clicks.judge`.
    """
    if judge is None or not hasattr(judge, "probabilities"):
        return None
    name = getattr(judge, "name", None)
    if config.mechanisms.pctr_model == "judge" and name not in judge_names():
        return judge
    return judge if name == pctr_model_name(config) else None


def load_click_model(config, *, click_model=None, encoder=None, catalog=None, user_lm=None):
    """The pCTR click model that `mechanisms.pctr_model` names (`pctr_model_name`).

    A given `click_model` is used as is, unless it is a registered judge other than the
    configured one: that is refused rather than scored with the wrong model.
    """
    if click_model is not None:
        if not hasattr(click_model, "probabilities"):
            raise TypeError(f"click model {getattr(click_model, 'name', click_model)!r} has no "
                            "probabilities(); pass a ClickModel such as the embedding judge")
        given = getattr(click_model, "name", None)
        if given in judge_names() and given != pctr_model_name(config):
            raise ConfigError(
                f"the click model given for pCTR is the {given!r} judge but "
                f"mechanisms.pctr_model = {config.mechanisms.pctr_model!r} names "
                f"{pctr_model_name(config)!r}; pass that model or set "
                f"mechanisms.pctr_model = {given!r}")
        return click_model
    name = pctr_model_name(config)
    resources = {"encoder": encoder, "catalog": catalog}
    if user_lm is not None:
        resources["user_lm"] = user_lm
    model = make_judge(name, config, **resources)
    if not hasattr(model, "probabilities"):
        raise _no_probabilities(config.mechanisms.pctr_model, name)
    return model


def template_pctr(click_model, requests: Sequence) -> list[dict[str, float]]:
    """{ad_id: pCTR} per `AuctionRequest`, one ad at a time in `PCTR_TEMPLATE`; one model call."""
    pairs = [ClickRequest(r.profile, r.query,
                          PCTR_TEMPLATE.format(mention=render_mention(ad.title, ad.id)), (ad,))
             for r in requests for ad in r.candidates]
    flat = click_model.probabilities(pairs)
    out, k = [], 0
    for r in requests:
        probs = {}
        for ad in r.candidates:
            probs[ad.id] = float(flat[k].get(ad.id, 0.0))
            k += 1
        out.append(probs)
    return out


def response_pctr(click_model, requests: Sequence, allocations: Sequence,
                  catalog_ads: dict | None = None) -> list[dict[str, float]]:
    """{ad_id: pCTR} of each validly exposed ad inside its actual answer; one model call."""
    asked = []
    for r, a in zip(requests, allocations):
        by_id = {ad.id: ad for ad in r.candidates}
        if catalog_ads:
            by_id = {**catalog_ads, **by_id}
        asked.append(ClickRequest(r.profile, r.query, a.response,
                                  tuple(by_id[i] for i in a.exposed_ids), a.report.valid))
    return click_model.probabilities(asked)
