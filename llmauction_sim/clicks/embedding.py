"""A transparent click model on sentence embeddings (the default judge; see docs/clicks.md).

For exposed ad i of a response with n exposed ads::

    relevance_i  = (1 - w) * cos(ad_i, query) + w * cos(ad_i, interests)      (w = profile_weight)
    logit_i      = bias + relevance_weight * relevance_i
                        + nativeness_weight * nativeness_i - fatigue * (n - 1)
    p_i          = sigmoid(logit_i)

Clicks are independent Bernoulli(p_i) draws, then at most one click survives among competing ads
(same category, or ad-ad cosine >= duplicate_similarity): `keep_one_per_group`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from llmauction_sim.clicks.base import (
    ClickDecision,
    ClickModel,
    ClickRequest,
    keep_one_per_group,
    register_judge,
)
from llmauction_sim.config import EmbeddingJudgeConfig
from llmauction_sim.domain.catalog import Ad, Catalog
from llmauction_sim.domain.mentions import Mention, parse_mentions
from llmauction_sim.lm.encoder import catalog_embeddings, interests_text

#: Words besides the mention (in its sentence) at which a mention counts as fully woven in.
WOVEN_WORDS = 6
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_DEFAULTS = EmbeddingJudgeConfig()


def find_mentions(request: ClickRequest) -> tuple[list[Mention | None], list[Mention]]:
    """(the mention behind each exposed ad, every well-formed mention of the text).

    An exposed ad's mention comes from `request.mentions`, else from parsing the response (its
    first mention); None when the text has none.
    """
    parsed = parse_mentions(request.response)[0]
    given = {m.ad_id: m for m in request.mentions}
    for m in parsed:
        given.setdefault(m.ad_id, m)
    return [given.get(ad.id) for ad in request.exposed], [*parsed, *request.mentions]


def mention_nativeness(text: str, mention: Mention | None,
                       others: Sequence[Mention] = ()) -> float:
    """How woven into the answer a mention is, in [0, 1].

    The mention's sentence is the stretch of its line between the nearest sentence ends ('.',
    '!' or '?' followed by a space or the line's end) around it. Nativeness is the number of words
    in that sentence outside any mention (`others` holds all mentions of the text; list bullets do
    not count), divided by `WOVEN_WORDS` and capped at 1. A mention alone on a line or in a list of
    mentions scores ~0; one inside an ordinary sentence scores 1. A missing mention scores 0.
    """
    if mention is None:
        return 0.0
    line_start = text.rfind("\n", 0, mention.start) + 1
    line_end = text.find("\n", mention.end)
    line_end = len(text) if line_end < 0 else line_end
    start = line_start
    for match in _SENTENCE_END.finditer(text, line_start, mention.start):
        start = match.end()
    end_match = _SENTENCE_END.search(text, mention.end, line_end)
    end = end_match.end() if end_match else line_end
    spans = sorted({(m.start, m.end) for m in (*others, mention)
                    if m.start < end and m.end > start})
    pieces, pos = [], start
    for s, e in spans:
        pieces.append(text[pos:max(pos, s)])
        pos = max(pos, e)
    pieces.append(text[pos:end])
    words = len(_WORD.findall(_BULLET.sub("", " ".join(pieces))))
    return min(1.0, words / WOVEN_WORDS)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


class EmbeddingJudge(ClickModel):
    """The click model above, vectorized over a whole batch of requests."""

    name = "embedding"

    def __init__(self, encoder, catalog: Catalog | None = None, *,
                 bias: float = _DEFAULTS.bias,
                 relevance_weight: float = _DEFAULTS.relevance_weight,
                 profile_weight: float = _DEFAULTS.profile_weight,
                 nativeness_weight: float = _DEFAULTS.nativeness_weight,
                 fatigue: float = _DEFAULTS.fatigue,
                 duplicate_similarity: float = _DEFAULTS.duplicate_similarity):
        self.encoder = encoder
        self.bias = bias
        self.relevance_weight = relevance_weight
        self.profile_weight = profile_weight
        self.nativeness_weight = nativeness_weight
        self.fatigue = fatigue
        self.duplicate_similarity = duplicate_similarity
        self._catalog_ads: dict[str, Ad] = {}
        self._catalog_vectors: dict[str, np.ndarray] = {}
        if catalog is not None:
            vectors = catalog_embeddings(catalog, encoder)
            self._catalog_ads = {ad.id: ad for ad in catalog}
            self._catalog_vectors = {ad.id: vectors[i] for i, ad in enumerate(catalog)}

    @classmethod
    def from_config(cls, config, *, encoder, catalog: Catalog | None = None,
                    settings: EmbeddingJudgeConfig | None = None) -> EmbeddingJudge:
        """From the run config; `settings` defaults to its table ``[clicks.embedding]``."""
        c = settings or config.clicks.embedding
        return cls(encoder, catalog, bias=c.bias, relevance_weight=c.relevance_weight,
                   profile_weight=c.profile_weight, nativeness_weight=c.nativeness_weight,
                   fatigue=c.fatigue, duplicate_similarity=c.duplicate_similarity)

    # ------------------------------------------------------------------------------------------
    def features(self, requests: Sequence[ClickRequest]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat over all (request, exposed ad) pairs, in request then exposure order:
        (request index, relevance, nativeness, number of exposed ads, ad vectors [pairs, dim])."""
        owner = np.array([i for i, r in enumerate(requests) for _ in r.exposed], dtype=np.int64)
        if not len(owner):
            empty = np.zeros(0)
            return owner, empty, empty, empty, np.zeros((0, self.encoder.dim), np.float32)
        ads = [ad for r in requests for ad in r.exposed]
        # Ads of the catalog reuse its cached vectors; any other ad is encoded with the texts.
        foreign = list(dict.fromkeys(ad.text() for ad in ads
                                     if self._catalog_ads.get(ad.id) != ad))
        asked = [r for r in requests if r.exposed]
        texts = ([r.query for r in asked] + [interests_text(r.profile) for r in asked]
                 + foreign)
        vecs = self.encoder.encode(texts)
        k = len(asked)
        row = np.cumsum([bool(r.exposed) for r in requests]) - 1  # request -> row in `asked`
        q, p = vecs[:k][row[owner]], vecs[k:2 * k][row[owner]]
        foreign_vec = dict(zip(foreign, vecs[2 * k:]))
        a = np.stack([self._catalog_vectors[ad.id] if self._catalog_ads.get(ad.id) == ad
                      else foreign_vec[ad.text()] for ad in ads])
        w = self.profile_weight
        relevance = (1 - w) * np.einsum("ij,ij->i", a, q) + w * np.einsum("ij,ij->i", a, p)
        nativeness = np.array([mention_nativeness(r.response, m, others)
                               for r in requests if r.exposed
                               for mentions, others in [find_mentions(r)] for m in mentions])
        count = np.array([len(r.exposed) for r in requests], dtype=np.float64)[owner]
        return owner, relevance.astype(np.float64), nativeness, count, a

    def _pair_probabilities(self, requests: Sequence[ClickRequest]):
        owner, relevance, nativeness, count, vectors = self.features(requests)
        logit = (self.bias + self.relevance_weight * relevance
                 + self.nativeness_weight * nativeness - self.fatigue * (count - 1))
        return owner, _sigmoid(logit), vectors

    def probabilities(self, requests: Sequence[ClickRequest]) -> list[dict[str, float]]:
        owner, probs, _ = self._pair_probabilities(requests)
        out: list[dict[str, float]] = [{} for _ in requests]
        ids = [ad.id for r in requests for ad in r.exposed]
        for i, ad_id, p in zip(owner, ids, probs):
            out[i][ad_id] = float(p)
        return out

    def judge(self, requests: Sequence[ClickRequest], rng: np.random.Generator
              ) -> list[ClickDecision]:
        owner, probs, vectors = self._pair_probabilities(requests)
        draws = rng.random(len(probs))  # one uniform per exposed ad, whatever the outcome
        clicked = draws < probs
        decisions, start = [], 0
        for r in requests:
            n = len(r.exposed)
            sl = slice(start, start + n)
            start += n
            if not n:
                decisions.append(ClickDecision(clicked=()))
                continue
            v = vectors[sl]
            cats = np.array([ad.category for ad in r.exposed])
            compete = (v @ v.T >= self.duplicate_similarity) | (cats[:, None] == cats[None, :])
            np.fill_diagonal(compete, False)
            keep = keep_one_per_group(clicked[sl], probs[sl], compete)
            decisions.append(ClickDecision(
                clicked=tuple(ad.id for ad, k in zip(r.exposed, keep) if k),
                probabilities={ad.id: float(p) for ad, p in zip(r.exposed, probs[sl])}))
        return decisions


def make_embedding_judge(config, *, settings=None, user_lm=None, encoder=None, catalog=None
                         ) -> EmbeddingJudge:
    """Registered as 'embedding'; loads the encoder (`retrieval.encoder`) and catalog if not given."""
    if encoder is None:
        from llmauction_sim.lm.encoder import load_encoder

        encoder = load_encoder(config.retrieval.encoder)
    if catalog is None:
        from llmauction_sim.domain.catalog import load_catalog

        catalog = load_catalog(config.data.catalog)
    return EmbeddingJudge.from_config(config, encoder=encoder, catalog=catalog, settings=settings)


register_judge("embedding", make_embedding_judge,
               "click model on sentence embeddings: relevance and nativeness (default)",
               config_class=EmbeddingJudgeConfig)
