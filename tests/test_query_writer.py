"""Query validation, seeds and topics per slot, the template writer, and the retry/dedupe loop."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from llmauction_sim.config import SamplingConfig
from llmauction_sim.data import write_queries_for
from llmauction_sim.lm.base import Completion, SamplingParams
from llmauction_sim.lm.prompts import query_writer_messages
from llmauction_sim.lm.query_writer import (
    MAX_WORDS,
    MIN_WORDS,
    LLMQueryWriter,
    TemplateQueryWriter,
    clean_query,
    normalize,
    slot_seed,
    topics_for,
)

# --- clean_query ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Which running shoes are best for a first marathon?",
    "How do I brew good pour-over coffee at home?",
    "Is a standing desk worth it for a small flat?",
])
def test_ordinary_questions_pass_unchanged(text: str) -> None:
    assert clean_query(text) == (text, "ok")


@pytest.mark.parametrize("text, expected", [
    ("Sure. Which tent is best for winter camping trips? I also want it light.",
     "Which tent is best for winter camping trips?"),
    ("I love tea. What green tea is best for mornings?\nAnd which is cheapest?",
     "What green tea is best for mornings?"),
    ("  Which laptop should I buy for photo editing?  \n\nIt should be light.",
     "Which laptop should I buy for photo editing?"),
])
def test_first_question_sentence_is_taken(text: str, expected: str) -> None:
    assert clean_query(text) == (expected, "ok")


@pytest.mark.parametrize("text", [
    "Q: Which laptop should I buy for photo editing?",
    "q) Which laptop should I buy for photo editing?",
    "User: Which laptop should I buy for photo editing?",
    "A: Which laptop should I buy for photo editing?",
    '"Which laptop should I buy for photo editing?"',
    "'Which laptop should I buy for photo editing?'",
    "\u201cWhich laptop should I buy for photo editing?\u201d",
    "Q: \"Which laptop should I buy for photo editing?\"",
])
def test_labels_and_quotes_are_stripped(text: str) -> None:
    assert clean_query(text) == ("Which laptop should I buy for photo editing?", "ok")


def test_question_label_is_stripped() -> None:
    assert clean_query("Question: Which laptop should I buy for photo editing?") == (
        "Which laptop should I buy for photo editing?", "ok")


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   \n\t ", "empty"),
    ("I'm sorry, I can't help with that?", "refusal_or_assistant_voice"),
    ("I am sorry, but which shoes do you mean?", "refusal_or_assistant_voice"),
    ("As an AI, which running shoes would you choose?", "refusal_or_assistant_voice"),
    ("Happy to help! Which shoes are best for running?", "refusal_or_assistant_voice"),
    ("Here is a question you could ask: which tent is best?", "refusal_or_assistant_voice"),
    ("As a 25-34 year old nurse, which shoes should I buy?", "refusal_or_assistant_voice"),
    ("Dear assistant, which tea is best for the morning?", "refusal_or_assistant_voice"),
    ("Which shoes are best for running.", "no_question"),
    ("Running shoes for a marathon", "no_question"),
    ("Best shoes?", "too_short"),
    ("Which shoes?", "too_short"),
    ("Which " + "really " * MAX_WORDS + "good shoes?", "too_long"),
    ("Is @Stridewell Road Runners@[Ad-4820] a good pick?", "markup"),
    ("Is [this] laptop good for me?", "markup"),
])
def test_rejections_name_the_reason(text: str, reason: str) -> None:
    assert clean_query(text) == (None, reason)


def test_word_limits_are_inclusive() -> None:
    shortest = " ".join(["Which"] + ["shoe"] * (MIN_WORDS - 2) + ["fits?"])
    longest = " ".join(["Which"] + ["shoe"] * (MAX_WORDS - 2) + ["fits?"])
    assert clean_query(shortest) == (shortest, "ok")
    assert clean_query(longest) == (longest, "ok")


# --- normalize, slot_seed, topics_for ------------------------------------------------------------

def test_normalize_ignores_case_punctuation_and_spacing() -> None:
    variants = ["Which tea is best for cold brew?", "which TEA is best for cold-brew",
                "  Which tea, is best for cold brew?!  ", "\"Which tea is best for cold brew?\""]
    assert len({normalize(v) for v in variants}) == 1
    assert normalize(variants[0]) == "which tea is best for cold brew"
    assert normalize("Which tea is best for hot brew?") != normalize(variants[0])
    assert normalize("What's best?") == "what's best"


def test_slot_seed_deterministic_distinct_and_in_range() -> None:
    base = (7, 3, 1, 2)
    assert slot_seed(*base) == slot_seed(*base)
    seeds = {slot_seed(*base)}
    for position in range(4):
        for delta in (1, 2):
            args = list(base)
            args[position] += delta
            seeds.add(slot_seed(*args))
    assert len(seeds) == 9
    grid = [slot_seed(s, p, a, k) for s in range(2) for p in range(5) for a in range(3)
            for k in range(4)]
    assert len(set(grid)) == len(grid)
    assert all(0 <= x < 2**63 for x in grid)  # fits a signed 64-bit torch seed


def test_topics_for_round_robin(profile_factory) -> None:
    p = profile_factory("tea", "yoga", "chess")
    assert topics_for(p, 5) == ["tea", "yoga", "chess", "tea", "yoga"]
    assert topics_for(p, 3, start=2) == ["chess", "tea", "yoga"]
    assert topics_for(p, 2, start=4) == ["yoga", "chess"]
    assert topics_for(p, 0) == []


# --- TemplateQueryWriter -------------------------------------------------------------------------

def _requests(profiles, per_profile: int):
    return [(i, p, t, s) for i, p in enumerate(profiles)
            for s, t in enumerate(topics_for(p, per_profile))]


@pytest.fixture
def some_profiles(packaged_catalog):
    from llmauction_sim.domain.users import generate_profiles

    return generate_profiles(40, 11, packaged_catalog)


def test_template_writer_deterministic_and_valid(some_profiles) -> None:
    requests = _requests(some_profiles, 3)
    first = TemplateQueryWriter(5).candidates(requests, 0)
    assert first == TemplateQueryWriter(5).candidates(requests, 0)
    assert len(first) == len(requests)
    for (_, _, topic, _), texts in zip(requests, first, strict=True):
        assert len(texts) == 1
        query, reason = clean_query(texts[0])
        assert reason == "ok" and query == texts[0]
        assert topic.replace("_", " ") in texts[0] and "_" not in texts[0]
    # Per request, not per batch: a reversed batch gives the same text for each request.
    assert TemplateQueryWriter(5).candidates(requests[::-1], 0) == first[::-1]
    # Another seed or another attempt draws other templates somewhere.
    assert TemplateQueryWriter(6).candidates(requests, 0) != first
    assert TemplateQueryWriter(5).candidates(requests, 1) != first


# --- LLMQueryWriter (with a recording model) -----------------------------------------------------

class RecordingLM:
    name = "recording"

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), list(params)))
        return [[Completion(f"text {i}.{j}", 3, True) for j in range(p.n)]
                for i, p in enumerate(params)]


def test_llm_writer_requests(some_profiles) -> None:
    lm = RecordingLM()
    sampling = SamplingConfig(temperature=0.3, top_p=0.8, top_k=20, max_new_tokens=64)
    writer = LLMQueryWriter(lm, sampling, seed=9, samples_per_slot=3)
    requests = [(5, some_profiles[5], some_profiles[5].interests[0], 0),
                (6, some_profiles[6], some_profiles[6].interests[1], 1)]
    out = writer.candidates(requests, attempt=2)
    assert out == [["text 0.0", "text 0.1", "text 0.2"], ["text 1.0", "text 1.1", "text 1.2"]]
    (prompts, params), = lm.calls
    assert prompts[1] == query_writer_messages(some_profiles[6], some_profiles[6].interests[1])
    assert params[0] == SamplingParams(temperature=0.3, top_p=0.8, top_k=20, max_new_tokens=48,
                                       n=3, seed=slot_seed(9, 5, 2, 0), stop=("?",))
    assert params[1].seed == slot_seed(9, 6, 2, 1)
    small = LLMQueryWriter(lm, SamplingConfig(max_new_tokens=20), seed=9)
    small.candidates(requests[:1], 0)
    assert lm.calls[-1][1][0].max_new_tokens == 20


# --- write_queries_for with a scripted writer ----------------------------------------------------

class ScriptedWriter:
    """Answers each request from `script[(profile index, attempt, slot)]` (default: no texts)."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.calls: list[tuple[int, list[tuple[int, str, int]]]] = []

    def candidates(self, requests, attempt):
        self.calls.append((attempt, [(i, topic, slot) for i, _, topic, slot in requests]))
        return [list(self.script.get((i, attempt, slot), [])) for i, _, _, slot in requests]


def test_retries_fill_missing_and_count_reasons(profile_factory) -> None:
    tea = profile_factory("tea", "yoga", user_id="U-00010")
    shoes = profile_factory("running_shoes", "chess", user_id="U-00011")
    script = {
        # attempt 0: one valid query for U-00010, none for U-00011
        (10, 0, 0): ["Sure thing", "Which tea is best for cold brew at home?"],
        (10, 0, 1): ["As an AI, I think yoga is great?"],
        (11, 0, 0): ["Shoes?"],
        (11, 0, 1): [""],
        # attempt 1: U-00010 repeats itself first; U-00011 fills one of two
        (10, 1, 1): ["which TEA is best for cold-brew at home", "Which tea is best for cold "
                     "brew at home?", "How do I start yoga with stiff hips?"],
        (11, 1, 0): ["Which running shoes suit flat feet on long runs?"],
        (11, 1, 1): ["Is @Chess Set@[Ad-0001] a good board for beginners?"],
        # attempt 2: the last missing query
        (11, 2, 1): ["How do I get better at chess endgames quickly?"],
    }
    writer = ScriptedWriter(script)
    rows, rejected = write_queries_for(writer, [tea, shoes], 10, per_profile=2, max_attempts=4)
    assert rows == [
        {"user_id": "U-00010", "topic": "tea", "query": "Which tea is best for cold brew at home?"},
        {"user_id": "U-00010", "topic": "yoga", "query": "How do I start yoga with stiff hips?"},
        {"user_id": "U-00011", "topic": "running_shoes",
         "query": "Which running shoes suit flat feet on long runs?"},
        {"user_id": "U-00011", "topic": "chess",
         "query": "How do I get better at chess endgames quickly?"},
    ]
    assert rejected == Counter({"no_question": 2, "refusal_or_assistant_voice": 1,
                                "too_short": 1, "empty": 1, "duplicate": 1, "markup": 1})
    # Retries ask only for what is missing, with the next slot and the round-robin topic; once
    # every profile is full no further call is made.
    assert writer.calls == [
        (0, [(10, "tea", 0), (10, "yoga", 1), (11, "running_shoes", 0), (11, "chess", 1)]),
        (1, [(10, "yoga", 1), (11, "running_shoes", 0), (11, "chess", 1)]),
        (2, [(11, "chess", 1)]),
    ]


def test_duplicates_are_per_profile(profile_factory) -> None:
    same = "Which tea is best for cold brew at home?"
    a = profile_factory("tea", user_id="U-00000")
    b = profile_factory("tea", user_id="U-00001")
    writer = ScriptedWriter({(0, 0, 0): [same], (1, 0, 0): [same]})
    rows, rejected = write_queries_for(writer, [a, b], 0, per_profile=1, max_attempts=1)
    assert [r["query"] for r in rows] == [same, same]
    assert rejected == Counter()


def test_short_profiles_keep_what_they_got(profile_factory) -> None:
    full = profile_factory("tea", user_id="U-00000")
    partial = profile_factory("yoga", "camping", user_id="U-00001")
    empty = profile_factory("coffee", user_id="U-00002")
    script = {(0, 0, s): [f"Which tea suits a quiet evening number {s}?"] for s in range(3)}
    script[(1, 0, 0)] = ["How do I start yoga with stiff hips?"]
    for attempt in range(3):
        for slot in range(3):
            script.setdefault((1, attempt, slot), ["Camping with yoga is fun."])
            script[(2, attempt, slot)] = ["I'm sorry, I cannot write that?"]
    writer = ScriptedWriter(script)
    rows, rejected = write_queries_for(writer, [full, partial, empty], 0, per_profile=3,
                                       max_attempts=3)
    per_user = Counter(r["user_id"] for r in rows)
    assert per_user == Counter({"U-00000": 3, "U-00001": 1})
    assert [r["query"] for r in rows if r["user_id"] == "U-00001"] == [
        "How do I start yoga with stiff hips?"]
    assert len(writer.calls) == 3  # max_attempts rounds, then it gives up
    # U-00001: 2 failures in attempt 0, then 2 per later attempt; U-00002: 3 per attempt.
    assert rejected == Counter({"no_question": 6, "refusal_or_assistant_voice": 9})


def test_one_query_per_slot_with_several_samples(profile_factory) -> None:
    p = profile_factory("tea", "yoga", "camping")

    class ThreeSamples:
        name = "three"

        def candidates(self, requests, attempt):
            return [[f"How do I choose {topic} gear, option {k}, for me?" for k in range(3)]
                    for _, _, topic, _ in requests]

    rows, _ = write_queries_for(ThreeSamples(), [p], 0, per_profile=3, max_attempts=2)
    assert [r["topic"] for r in rows] == ["tea", "yoga", "camping"]


def test_no_texts_at_all(profile_factory) -> None:
    writer = ScriptedWriter({})
    rows, rejected = write_queries_for(writer, [profile_factory("tea")], 0, per_profile=2,
                                       max_attempts=2)
    assert rows == [] and rejected == Counter()
    assert len(writer.calls) == 2


def test_seeds_do_not_depend_on_chunking(some_profiles) -> None:
    writer = TemplateQueryWriter(3)
    whole, _ = write_queries_for(writer, some_profiles[:12], 0, 3, 2)
    parts = []
    for first in range(0, 12, 5):
        rows, _ = write_queries_for(writer, some_profiles[first:min(first + 5, 12)], first, 3, 2)
        parts += rows
    assert whole == parts
    assert np.all([r["user_id"] == p.user_id for r, p in
                   zip(whole[::3], some_profiles[:12], strict=True)])
