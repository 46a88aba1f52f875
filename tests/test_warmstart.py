"""Format warm start: mention insertion and the SFT step."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import embedded_tokenizer, tiny_llama

from llmauction_sim.config import DpoConfig, WarmStartConfig
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.domain.mentions import validate_response
from llmauction_sim.domain.users import generate_profiles
from llmauction_sim.learning.dpo import completion_logprobs
from llmauction_sim.learning.warmstart import (
    build_examples,
    first_mention_tokens,
    gate_report,
    insert_mentions,
    run_sft,
)
from llmauction_sim.mechanisms import AuctionRequest

CATALOG = load_catalog()


def _request(k: int, bids) -> AuctionRequest:
    profile = generate_profiles(1, seed=k, catalog=CATALOG)[0]
    cands = tuple(CATALOG[5 * k:5 * k + 5])
    return AuctionRequest(f"q{k}", profile, "Where can I learn to cook?", cands,
                          dict(zip((a.id for a in cands), bids)))


def test_inserted_mentions_are_valid_and_after_the_first_sentence() -> None:
    ads = list(CATALOG[:2])
    text = insert_mentions("First part. Second part @broken@[Ad-9] here.", ads,
                           np.random.default_rng(0))
    report = validate_response(text, {a.id: a.title for a in ads}, CATALOG.ids)
    assert report.valid and set(report.exposed_ids) == {a.id for a in ads}
    assert text.startswith("First part. ") and text.endswith("Second part here.")
    assert "broken" not in text.split("@")[0]
    assert validate_response(insert_mentions("", ads[:1], np.random.default_rng(1)),
                             {ads[0].id: ads[0].title}, CATALOG.ids).valid


def test_the_inserted_ads_do_not_depend_on_the_bids() -> None:
    low = [_request(k, [1, 2, 3, 4, 5]) for k in range(6)]
    high = [_request(k, [100, 90, 80, 70, 1]) for k in range(6)]
    answers = ["An answer. With two sentences."] * 6
    a = build_examples(low, answers, 2, np.random.default_rng(3))
    b = build_examples(high, answers, 2, np.random.default_rng(3))
    assert [e.inserted for e in a] == [e.inserted for e in b]
    assert all(len(set(e.inserted)) == 2 for e in a)
    assert "bid" in a[0].prompt[-1]["content"]


def test_sft_raises_the_log_prob_of_the_answers_with_mentions() -> None:
    tokenizer = embedded_tokenizer()
    model = tiny_llama(tokenizer, hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1)
    requests = [_request(k, [10, 20, 30, 40, 50]) for k in range(4)]
    examples = build_examples(requests, ["Sure. Here is a plan."] * 4, 1,
                              np.random.default_rng(0))
    prompts = [e.prompt for e in examples]
    before = completion_logprobs(model, tokenizer, prompts, [e.completion for e in examples])
    result = run_sft(model, tokenizer, examples,
                     WarmStartConfig(learning_rate=5e-2, epochs=4, batch_size=2),
                     DpoConfig(max_length=512))
    after = completion_logprobs(result.model, tokenizer, prompts,
                                [e.completion for e in examples])
    # A random 1-layer model moves slowly (near-uniform logits); the direction is what counts.
    assert np.mean(after) > np.mean(before) + 1.0
    assert result.metrics["loss_last"] < result.metrics["loss_first"]
    assert not hasattr(result.model, "peft_config")  # merged: a plain model
    with pytest.raises(ValueError, match="warmstart.queries"):
        run_sft(model, tokenizer, [], WarmStartConfig(), DpoConfig())


# --- the gate ------------------------------------------------------------------------------------

def _allocation(request: AuctionRequest, text: str):
    from llmauction_sim.mechanisms import Allocation

    report = validate_response(text, request.candidate_titles(), CATALOG.ids)
    return Allocation(text, report, 0.0)


def _mention(ad) -> str:
    return f"@{ad.title}@[{ad.id}]"


def test_gate_passes_a_bid_blind_policy_that_mentions_early() -> None:
    rng = np.random.default_rng(0)
    requests = [_request(k % 20, rng.permutation([10, 20, 30, 40, 90]).tolist()) for k in range(200)]
    allocations = [_allocation(r, f"Sure. Try {_mention(r.candidates[k % 5])} today.")
                   if k % 4 else _allocation(r, "Sure, here is how.")
                   for k, r in enumerate(requests)]
    tokens = [3 if a.exposed_ids else None for a in allocations]
    report = gate_report(requests, allocations, tokens, np.random.default_rng(1))
    assert report["mention_rate"]["estimate"] == 0.75
    assert report["checks"] == {"mention_rate": True, "format_errors": True,
                                "early_mentions": True, "bid_blind": True}
    assert report["passed"]


def test_gate_fails_each_check_on_its_own_fault() -> None:
    rng = np.random.default_rng(0)
    requests = [_request(k % 20, rng.permutation([10, 20, 30, 40, 90]).tolist()) for k in range(200)]
    top = [max(r.candidates, key=lambda a: r.bids[a.id]) for r in requests]
    # Always the top bid: not bid-blind. Late mentions. A broken mention in a tenth.
    allocations = [_allocation(r, f"Sure. Try {_mention(t)} today." if k % 10
                               else f"Sure. Try @{t.title}@[{t.id} today.")
                   for k, (r, t) in enumerate(zip(requests, top))]
    tokens = [90 if a.exposed_ids else None for a in allocations]
    report = gate_report(requests, allocations, tokens, np.random.default_rng(1))
    assert report["checks"] == {"mention_rate": True, "format_errors": False,
                                "early_mentions": False, "bid_blind": False}
    assert report["top_bid_exposure_share"]["estimate"] == 1.0
    assert not report["passed"]
    none = [_allocation(r, "Sure.") for r in requests]
    assert not gate_report(requests, none, [None] * 200,
                           np.random.default_rng(1))["checks"]["mention_rate"]


def test_first_mention_tokens_counts_tokens_before_the_mention() -> None:
    r = _request(0, [1, 2, 3, 4, 5])
    allocations = [_allocation(r, f"One two three. {_mention(r.candidates[0])}"),
                   _allocation(r, "No ad here.")]
    tokenizer = embedded_tokenizer()
    got = first_mention_tokens(tokenizer, allocations)
    assert got == [len(tokenizer("One two three. ")["input_ids"]), None]


def test_long_first_sentence_puts_the_mention_first_and_max_sentences_cuts() -> None:
    ad = CATALOG[0]
    long = "A " + "very " * 60 + "long first sentence. Second one. Third one. Unfinished"
    text = insert_mentions(long, [ad], np.random.default_rng(0), max_sentences=2)
    assert text.index("@") < 80 and text.endswith("Second one.")
    short = insert_mentions("Short. Second. Third.", [ad], np.random.default_rng(0),
                            max_sentences=2)
    assert short.startswith("Short. ") and short.endswith(" Second.")
    assert insert_mentions("Short. Second.", [], np.random.default_rng(0)) == "Short. Second."


def test_no_ad_rate_leaves_that_share_without_mentions() -> None:
    requests = [_request(k % 6, [1, 2, 3, 4, 5]) for k in range(400)]
    examples = build_examples(requests, ["An answer. Two."] * 400, 1, np.random.default_rng(0),
                              no_ad_rate=0.25)
    share = np.mean([not e.inserted for e in examples])
    assert 0.19 < share < 0.31
    assert all("@" not in e.completion for e in examples if not e.inserted)
