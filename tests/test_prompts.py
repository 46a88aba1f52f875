"""Prompt builders: the Ad-LLM's allocation prompt and the User-LLM's query-writing prompt."""

from __future__ import annotations

import json

import pytest

from llmauction_sim.config import AdPromptConfig
from llmauction_sim.lm.prompts import (
    ad_llm_messages,
    ad_llm_slot_messages,
    format_bid,
    query_writer_messages,
)


def paper_messages(*args):
    return ad_llm_messages(*args, AdPromptConfig(style="paper"))


QUERIES = ("Which running shoes are best for my first marathon?",
           "How do I brew a strong cup of tea without bitterness?")


def candidate_line(messages) -> list[dict]:
    lines = [line for line in messages[-1]["content"].splitlines()
             if line.startswith("Candidate ads: ")]
    assert len(lines) == 1
    return json.loads(lines[0].removeprefix("Candidate ads: "))


@pytest.fixture
def candidates(packaged_catalog):
    return [packaged_catalog.by_id("Ad-4820"), packaged_catalog.by_id("Ad-8617"),
            *packaged_catalog.in_category("tea")[:2]]


@pytest.fixture
def bids(candidates):
    return {ad.id: b for ad, b in zip(candidates, (37, 100, 1, 64), strict=True)}


def test_roles_and_shared_system_message(candidates, bids, profile_factory) -> None:
    first = paper_messages(profile_factory("running_shoes"), QUERIES[0], candidates, bids)
    other_bids = {k: 101 - v for k, v in bids.items()}
    second = paper_messages(profile_factory("tea", user_id="U-00077", occupation="chef",
                                             region="Tokyo, Japan"),
                             QUERIES[1], list(reversed(candidates)), other_bids)
    assert [m["role"] for m in first] == ["system", "user"]
    assert first[0] == second[0]  # one shared prefix for a whole batch
    assert first[1] != second[1]
    # Nothing query-specific leaks into the shared part.
    for ad in candidates:
        assert ad.id not in first[0]["content"] and ad.title not in first[0]["content"]
    assert QUERIES[0] not in first[0]["content"]
    # The rules show the exact markup the parser reads.
    assert "@Acme Trail Shoes@[Ad-0001]" in first[0]["content"]


def test_user_message_has_profile_candidates_and_query(candidates, bids,
                                                       profile_factory) -> None:
    profile = profile_factory("running_shoes", "jazz", occupation="electrician")
    messages = paper_messages(profile, QUERIES[0], candidates, bids)
    content = messages[1]["content"]
    assert profile.describe() in content
    assert content.splitlines()[-1] == f"Question: {QUERIES[0]}"
    parsed = candidate_line(messages)
    assert parsed == [{"id": ad.id, "title": ad.title, "bid": bids[ad.id]} for ad in candidates]
    for ad in candidates:
        assert ad.title in content  # exact title, not escaped or altered


def test_candidate_order_is_kept(candidates, bids, profile_factory) -> None:
    reordered = [candidates[2], candidates[0], candidates[3], candidates[1]]
    parsed = candidate_line(paper_messages(profile_factory("tea"), QUERIES[1], reordered, bids))
    assert [item["id"] for item in parsed] == [ad.id for ad in reordered]


def test_non_ascii_title_is_written_as_is(profile_factory) -> None:
    from llmauction_sim.domain.catalog import Ad

    ad = Ad(id="Ad-0042", title="Café Crème Grinder", category="coffee", description="d")
    messages = paper_messages(profile_factory("coffee"), QUERIES[1], [ad], {"Ad-0042": 5})
    assert "Café Crème Grinder" in messages[1]["content"]
    assert candidate_line(messages)[0]["title"] == "Café Crème Grinder"


def test_bid_rendering(candidates, profile_factory) -> None:
    bids = {candidates[0].id: 12.3456, candidates[1].id: 7.0, candidates[2].id: 42,
            candidates[3].id: 0.5}
    parsed = candidate_line(paper_messages(profile_factory("tea"), QUERIES[1], candidates, bids))
    rendered = {item["id"]: item["bid"] for item in parsed}
    assert rendered[candidates[0].id] == 12.35 and isinstance(rendered[candidates[0].id], float)
    # A whole-number float is written like an int ("7", not "7.0").
    assert rendered[candidates[1].id] == 7 and isinstance(rendered[candidates[1].id], int)
    assert rendered[candidates[2].id] == 42 and isinstance(rendered[candidates[2].id], int)
    assert rendered[candidates[3].id] == 0.5


def test_missing_bid_raises(candidates, bids, profile_factory) -> None:
    del bids[candidates[1].id]
    with pytest.raises(KeyError):
        paper_messages(profile_factory("tea"), QUERIES[0], candidates, bids)


# --- the compact prompt (the default) -----------------------------------------------------------

def test_compact_prompt_lists_one_line_per_candidate(candidates, bids, profile_factory) -> None:
    profile = profile_factory("tea")
    first = ad_llm_messages(profile, QUERIES[1], candidates, bids)
    second = ad_llm_messages(profile_factory("coffee", user_id="U-00009"), QUERIES[0],
                             candidates[::-1], {k: 101 - v for k, v in bids.items()})
    assert first[0] == second[0] and "@Acme Trail Shoes@[Ad-0001]" in first[0]["content"]
    lines = first[1]["content"].splitlines()
    assert lines[0] == f"User: {profile.describe()}" and lines[1] == "Ads:"
    assert lines[2:-1] == [f"@{ad.title}@[{ad.id}] | bid {bids[ad.id]:03d}" for ad in candidates]
    assert lines[-1] == f"Question: {QUERIES[1]}"


@pytest.mark.parametrize("value, digits, text", [
    (7, 3, "007"), (100, 3, "100"), (87.0, 3, "087"), (12.5, 3, "012.50"), (0.456, 3, "000.46"),
    (7, 0, "7"), (12.5, 0, "12.50"), (1234, 3, "1234")])
def test_format_bid(value, digits, text) -> None:
    assert format_bid(value, digits) == text


def test_compact_prompt_is_much_shorter_than_the_papers(candidates, bids, profile_factory) -> None:
    profile = profile_factory("tea")
    compact = ad_llm_messages(profile, QUERIES[1], candidates, bids)
    paper = paper_messages(profile, QUERIES[1], candidates, bids)
    assert len(compact[0]["content"]) * 3 < len(paper[0]["content"])


def test_slot_prompt_lists_only_the_winners(candidates, bids, profile_factory) -> None:
    profile = profile_factory("tea")
    winners = candidates[1:3]
    compact = ad_llm_slot_messages(profile, QUERIES[1], winners, bids)
    # The compact style is the usual Ad-LLM prompt with the winners as its ad list.
    assert compact == ad_llm_messages(profile, QUERIES[1], winners, bids)
    paper = ad_llm_slot_messages(profile, QUERIES[1], winners, bids, AdPromptConfig(style="paper"))
    assert "Products to insert: " in paper[1]["content"]
    for ad in candidates:
        assert (ad.id in compact[1]["content"]) == (ad in winners)
        assert (ad.id in paper[1]["content"]) == (ad in winners)


# --- query writer prompt -------------------------------------------------------------------------

def test_query_writer_mentions_topic_and_person(profile_factory) -> None:
    profile = profile_factory("running_shoes", "home_office_furniture",
                              occupation="flight attendant", region="Nairobi, Kenya",
                              age_band="45-54", budget_sensitivity="high")
    messages = query_writer_messages(profile, "home_office_furniture")
    last = messages[-1]
    assert last["role"] == "user"
    assert "home office furniture" in last["content"]
    assert "home_office_furniture" not in last["content"]
    for part in ("flight attendant", "Nairobi, Kenya", "45-54", "high"):
        assert part in last["content"]


def test_query_writer_shares_few_shot_prefix(profile_factory) -> None:
    a = query_writer_messages(profile_factory("tea"), "tea")
    b = query_writer_messages(
        profile_factory("camping", user_id="U-00009", occupation="chef", region="Tokyo, Japan",
                        age_band="65+", budget_sensitivity="low"), "camping")
    assert len(a) == len(b) >= 3
    assert a[:-1] == b[:-1]
    assert a[-1] != b[-1]
    # Worked examples alternate user request / assistant question, each example a question.
    roles = [m["role"] for m in a]
    assert roles == ["user", "assistant"] * ((len(a) - 1) // 2) + ["user"]
    for m in a[:-1]:
        if m["role"] == "assistant":
            assert m["content"].endswith("?")
