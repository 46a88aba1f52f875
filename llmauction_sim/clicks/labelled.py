"""A labelled set for click judges: (profile, query, ad) triples whose relevance is known.

Triple i (deterministic from the seed; see docs/clicks.md):

* a synthetic profile (`generate_profiles`) and a query topic drawn from its interests that the
  catalog covers; the query is about that topic (`TemplateQueryWriter`);
* label 1 (even i): an ad of the topic's category, so it fits both the query and the interests;
* label 0 (odd i): an ad of a category that is neither the topic nor any of the user's interests;
* a short answer about the topic with the ad's mention woven into one sentence, built from the same
  templates and the same draws whatever the label, so only relevance tells the two apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmauction_sim.clicks.base import ClickRequest
from llmauction_sim.domain.catalog import Ad, Catalog, load_catalog
from llmauction_sim.domain.mentions import parse_mentions, render_mention
from llmauction_sim.domain.users import generate_profiles
from llmauction_sim.lm.query_writer import TemplateQueryWriter

_OPENINGS = (
    "Good question. With {topic}, it pays to decide what matters most to you before comparing "
    "options.",
    "For {topic}, start with your budget and how often you will really use it.",
    "A lot depends on your routine, but with {topic} a few basics go a long way.",
    "When it comes to {topic}, most people do best by starting small and learning as they go.",
)
_MENTIONS = (
    "Many people in your situation like {mention}, which is easy to start with.",
    "One option worth a look is {mention}, since it is well reviewed and simple to use.",
    "You could also try {mention} if you want something reliable that lasts.",
    "A popular pick right now is {mention}, and it often comes with a trial period.",
)
_CLOSINGS = (
    "Read a few recent reviews and keep it simple at first.",
    "Whatever you pick, give yourself a week or two to see what works for you.",
    "Compare prices in a couple of places before you decide.",
    "Ask friends what they use, too; their experience often saves money.",
)


@dataclass(frozen=True)
class LabelledTriple:
    request: ClickRequest  # one exposed ad, its mention located in the response
    label: int             # 1: the ad fits the query topic and the interests; 0: it fits neither
    topic: str             # the query's topic (a catalog category among the user's interests)

    @property
    def ad(self) -> Ad:
        return self.request.exposed[0]


def labelled_response(topic: str, ad: Ad, rng: np.random.Generator) -> str:
    """A three-sentence answer about `topic` with the ad's mention in the middle sentence."""
    opening, middle, closing = (t[int(rng.integers(len(t)))]
                                for t in (_OPENINGS, _MENTIONS, _CLOSINGS))
    return " ".join((opening.format(topic=topic.replace("_", " ")),
                     middle.format(mention=render_mention(ad.title, ad.id)), closing))


def build_labelled_set(n: int = 200, seed: int = 0, catalog: Catalog | None = None
                       ) -> list[LabelledTriple]:
    """`n` triples, alternating label 1 and 0 (so ceil(n/2) positives); same seed, same set."""
    if n < 2:
        raise ValueError(f"n = {n} must be >= 2 (at least one positive and one negative)")
    catalog = catalog if catalog is not None else load_catalog()
    categories = catalog.categories
    if len(categories) < 2:
        raise ValueError("the labelled set needs a catalog with at least two categories")
    profiles = generate_profiles(n, seed, catalog)
    writer = TemplateQueryWriter(seed)
    rng = np.random.default_rng([seed, 1])
    triples = []
    for i, profile in enumerate(profiles):
        covered = [x for x in profile.interests if x in categories]  # never empty
        topic = covered[int(rng.integers(len(covered)))]
        label = 1 - i % 2
        if label:
            pool = catalog.in_category(topic)
        else:
            others = [c for c in categories if c not in profile.interests and c != topic]
            pool = catalog.in_category(others[int(rng.integers(len(others)))])
        ad = pool[int(rng.integers(len(pool)))]
        query = writer.candidates([(i, profile, topic, 0)], attempt=0)[0][0]
        # Template choices from their own stream: independent of the label and of the ad.
        response = labelled_response(topic, ad, np.random.default_rng([seed, 2, i]))
        mentions = tuple(parse_mentions(response)[0])
        triples.append(LabelledTriple(
            request=ClickRequest(profile=profile, query=query, response=response, exposed=(ad,),
                                 mentions=mentions),
            label=label, topic=topic))
    return triples


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half). nan without both labels."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # Average rank within each run of equal scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
