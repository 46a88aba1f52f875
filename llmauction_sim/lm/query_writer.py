"""Query writers: the User-LLM writes each profile's questions; validation keeps the usable ones.

`LLMQueryWriter` is the default (the paper's setting). `TemplateQueryWriter` fills fixed templates and
exists only for speed when asked for by name (``data.query_writer = "template"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from llmauction_sim.domain.users import UserProfile
from llmauction_sim.lm.base import LanguageModel, SamplingParams
from llmauction_sim.lm.prompts import QUERY_EXAMPLES, query_writer_messages

MIN_WORDS, MAX_WORDS = 4, 40

# Answers in the assistant's voice, refusals, and letters instead of questions.
_REJECT = re.compile(
    r"\b(i'?m sorry|i am sorry|as an ai|i'?m an ai|ai assistant|chatbot|language model|"
    r"happy to (help|assist)|here to help|i can'?t|i cannot|unable to|dear \w+|"
    r"question|ask me)\b|\d+\s*-\s*\d+[- ]year|\d+\+", re.IGNORECASE)  # last two: echoed age bands
_LABEL = re.compile(r"^\s*(?:q(?:uestion)?|a(?:nswer)?|user)\s*[:.)-]\s*", re.IGNORECASE)
_QUESTION = re.compile(r"[^?.!\n\"]*\?")


def _ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


# Small models tend to copy the prompt's worked examples; four shared words in a row is a copy.
_EXAMPLE_NGRAMS = set().union(*(_ngrams(q) for _, _, q in QUERY_EXAMPLES))


def normalize(query: str) -> str:
    """Key for distinctness: lowercase words only."""
    return " ".join(re.findall(r"[a-z0-9']+", query.lower()))


def clean_query(text: str) -> tuple[str | None, str]:
    """(question, "ok") or (None, reason). Takes the first question sentence of the output."""
    if not text.strip():
        return None, "empty"
    body = _LABEL.sub("", text.strip().strip("\"'“”"))
    if _REJECT.search(body):
        return None, "refusal_or_assistant_voice"
    match = _QUESTION.search(body)
    if not match:
        return None, "no_question"
    query = _LABEL.sub("", match.group(0).strip().strip("\"'“”"))
    words = len(query.split())
    if words < MIN_WORDS:
        return None, "too_short"
    if words > MAX_WORDS:
        return None, "too_long"
    if "@" in query or "[" in query:
        return None, "markup"
    if _ngrams(query) & _EXAMPLE_NGRAMS:
        return None, "copied_example"
    return query, "ok"


def slot_seed(seed: int, profile_index: int, attempt: int, slot: int) -> int:
    """A seed per (profile, attempt, slot), so results do not depend on batching or chunking."""
    state = np.random.SeedSequence([seed, profile_index, attempt, slot]).generate_state(2)
    return int(state[0]) << 31 | int(state[1]) >> 1


def topics_for(profile: UserProfile, count: int, start: int = 0) -> list[str]:
    """Round robin over the profile's interests, so queries spread over all of them."""
    return [profile.interests[(start + i) % len(profile.interests)] for i in range(count)]


class LLMQueryWriter:
    """Samples `samples_per_slot` candidate questions per missing query, in one batched call."""

    name = "llm"

    def __init__(self, lm: LanguageModel, sampling, seed: int, samples_per_slot: int = 3,
                 max_new_tokens: int = 48):
        self.lm = lm
        self.sampling = sampling
        self.seed = seed
        self.samples_per_slot = samples_per_slot
        self.max_new_tokens = max_new_tokens

    def candidates(self, requests: Sequence[tuple[int, UserProfile, str, int]], attempt: int
                   ) -> list[list[str]]:
        """requests: (profile index, profile, topic, slot). One list of raw texts per request."""
        prompts = [query_writer_messages(p, topic) for _, p, topic, _ in requests]
        # A question ends at its question mark: stopping there saves most of the decode.
        params = [SamplingParams.from_config(
            self.sampling, n=self.samples_per_slot, seed=slot_seed(self.seed, i, attempt, slot),
            max_new_tokens=min(self.max_new_tokens, self.sampling.max_new_tokens), stop=("?",))
            for i, _, _, slot in requests]
        outputs = self.lm.generate(prompts, params)
        return [[c.text for c in out] for out in outputs]


_TEMPLATES = (
    "What {topic} would you recommend for a {occupation} with a {budget} budget?",
    "As a {occupation} in {city}, how do I choose good {topic}?",
    "What should I look for in {topic} as a first-time buyer?",
    "Which {topic} options are worth the money in {city}?",
    "How do I get started with {topic} as a busy {occupation}?",
    "What are common mistakes people make with {topic}?",
    "Can you compare a few {topic} choices for someone on a {budget} budget?",
)


class TemplateQueryWriter:
    """Fixed templates filled from the profile: fast and deterministic, but not the paper's setup."""

    name = "template"

    def __init__(self, seed: int):
        self.seed = seed

    def candidates(self, requests: Sequence[tuple[int, UserProfile, str, int]], attempt: int
                   ) -> list[list[str]]:
        out = []
        budget = {"low": "generous", "medium": "moderate", "high": "tight"}
        for i, p, topic, slot in requests:
            rng = np.random.default_rng(slot_seed(self.seed, i, attempt, slot))
            template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
            out.append([template.format(topic=topic.replace("_", " "), occupation=p.occupation,
                                        budget=budget[p.budget_sensitivity],
                                        city=p.region.split(",")[0])])
        return out
