"""pCTR for the baseline mechanisms, from a click model's probabilities (no clicks drawn).

Until a trained pCTR reward model exists, the click model (by default the transparent embedding
judge, `clicks.embedding`) gives P(click) of an ad in a given answer. Before an answer exists (the
pre-generation auction) an ad's pCTR is its probability inside a short templated sentence that
weaves its mention in, so every candidate is scored on the same footing.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmauction_sim.clicks.base import ClickRequest
from llmauction_sim.domain.mentions import render_mention

#: The sentence that carries an ad's mention when its pCTR is estimated before generation.
PCTR_TEMPLATE = ("For a question like yours, many people in a similar situation choose {mention} "
                 "because it fits what they need.")


def load_click_model(config, *, click_model=None, encoder=None, catalog=None):
    """The given click model, else the embedding judge built from `config` (it has
    `probabilities`, which every baseline needs whatever `clicks.judge` decides clicks)."""
    if click_model is not None:
        if not hasattr(click_model, "probabilities"):
            raise TypeError(f"click model {getattr(click_model, 'name', click_model)!r} has no "
                            "probabilities(); pass a ClickModel such as the embedding judge")
        return click_model
    from llmauction_sim.clicks.base import make_judge

    return make_judge("embedding", config, encoder=encoder, catalog=catalog)


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
