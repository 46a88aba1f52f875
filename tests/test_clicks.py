"""Click judges: reading the User-LLM's JSON, the embedding click model, the LLM judges on a tiny
random model, and the labelled set used to measure them (docs/clicks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import embedded_tokenizer, tiny_llama

from llmauction_sim.clicks import (
    ClickDecision,
    ClickRequest,
    EmbeddingJudge,
    LLMJudge,
    LogprobJudge,
    judge_names,
    keep_one_per_group,
    make_judge,
    mention_nativeness,
    parse_click_output,
)
from llmauction_sim.clicks.labelled import build_labelled_set, roc_auc
from llmauction_sim.clicks.llm import STOP
from llmauction_sim.config import RunConfig
from llmauction_sim.domain.catalog import Ad
from llmauction_sim.domain.mentions import parse_mentions, render_mention
from llmauction_sim.domain.users import UserProfile
from llmauction_sim.lm.base import Completion, SamplingParams
from llmauction_sim.lm.hf import TransformersLM
from llmauction_sim.lm.prompts import click_judge_messages, click_question_messages


def make_profile(*interests: str) -> UserProfile:
    return UserProfile("U-00001", "25-34", "nurse", "Lisbon, Portugal", "medium", interests)


SHOES = Ad("Ad-4820", "Stridewell Road Runners", "running_shoes", "Road running shoes.")
TRAIL = Ad("Ad-8617", "Trailfox Grip Shoes", "running_shoes", "Trail running shoes.")
TEA = Ad("Ad-1111", "Tea Garden Sampler", "tea", "Loose leaf tea.")
EXPOSED = (SHOES, TEA)


def reply(*entries) -> str:
    return json.dumps([{"ad_id": a, "clicked": c, "reason": "r"} for a, c in entries])


# --- parsing the click judge's reply ---------------------------------------------------------

def test_parse_clean_reply() -> None:
    parsed = parse_click_output(reply(("Ad-4820", True), ("Ad-1111", False)), EXPOSED)
    assert parsed.clicked == ("Ad-4820",)
    assert parsed.decided == ("Ad-4820", "Ad-1111")
    assert not parsed.malformed
    assert parsed.reasons == {"Ad-4820": "r", "Ad-1111": "r"}


@pytest.mark.parametrize("text", [
    "```json\n" + reply(("Ad-1111", True), ("Ad-4820", False)) + "\n```",
    "Sure! Here it is: " + reply(("Ad-1111", True), ("Ad-4820", False)) + " Hope that helps [1].",
    "[{'ad_id': 'Ad-1111', 'clicked': True, 'reason': 'tea'}, "
    "{'ad_id': 'Ad-4820', 'clicked': False, 'reason': 'no'},]",
    '[{"ad_id": "Ad-1111", "clicked": "yes"}, {"ad_id": "Ad-4820", "clicked": "No."}]',
    '[{"ad_id": "Ad-1111", "clicked": "Yes, it fits"}, {"ad_id": "Ad-4820", "clicked": "not '
    'really"}]',
    '[{"ad_id": "@Tea Garden Sampler@[Ad-1111]", "clicked": 1}, '
    '{"ad_id": "stridewell road runners", "clicked": 0}]',
    '[{"ID": "ad-1111", "Click": "true"}, {"id": "Ad 4820", "click": "false"}]',
    '{"clicks": [{"ad_id": "Ad-1111", "clicked": true}, {"ad_id": "Ad-4820", "clicked": false}]}',
    '{"Ad-1111": true, "Ad-4820": false}',
])
def test_parse_tolerates_harmless_noise(text: str) -> None:
    parsed = parse_click_output(text, EXPOSED)
    assert parsed.clicked == ("Ad-1111",)
    assert set(parsed.decided) == {"Ad-1111", "Ad-4820"}
    assert not parsed.malformed


@pytest.mark.parametrize("text, clicked", [
    ("I would click the tea one.", ()),                                   # no JSON at all
    ("", ()),
    ("[]", ()),                                                           # entries missing
    (reply(("Ad-4820", True)), ("Ad-4820",)),                             # one entry missing
    (reply(("Ad-4820", True), ("Ad-1111", False), ("Ad-7777", True)), ("Ad-4820",)),  # unknown
    (reply(("Ad-4820", "maybe"), ("Ad-1111", True)), ("Ad-1111",)),       # unreadable value
    (reply(("Ad-4820", True), ("Ad-4820", False), ("Ad-1111", False)), ("Ad-4820",)),  # conflict
    ('[{"ad_id": "Ad-4820", "clicked": true, "reason": "fits"}, {"ad_id": "Ad-1111", "cli',
     ("Ad-4820",)),                                                       # cut off
    ('[{"ad_id": "Ad-4820", "clicked": true, "reason": "my run', ("Ad-4820",)),
    ("[1, 2, 3]", ()),
    ('[{"clicked": true}, {"clicked": true}]', ()),                      # no IDs
])
def test_parse_malformed_is_flagged_and_unread_ads_are_not_clicked(text, clicked) -> None:
    parsed = parse_click_output(text, EXPOSED)
    assert parsed.malformed
    assert parsed.clicked == clicked


def test_parse_agreeing_duplicates_and_order_are_fine() -> None:
    text = reply(("Ad-1111", False), ("Ad-4820", True), ("Ad-4820", True))
    parsed = parse_click_output(text, EXPOSED)
    assert parsed.clicked == ("Ad-4820",) and not parsed.malformed


def test_parse_with_nothing_exposed() -> None:
    assert parse_click_output("[]", ()) == parse_click_output("```[]```", ())
    assert not parse_click_output("[]", ()).malformed
    assert parse_click_output(reply(("Ad-4820", True)), ()).malformed


JSONISH = st.text(alphabet=st.sampled_from(list('[]{}",:\' \ntruefalsyesnoAd-48201`json\\')),
                  max_size=200)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), JSONISH))
def test_parse_never_raises(text: str) -> None:
    parsed = parse_click_output(text, EXPOSED)
    assert set(parsed.clicked) <= set(parsed.decided) <= {ad.id for ad in EXPOSED}
    assert parsed.malformed or set(parsed.decided) == {ad.id for ad in EXPOSED}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Ad-4820", "Ad-1111"]), st.booleans()),
                min_size=0, max_size=4), st.text(max_size=30), st.text(max_size=30))
def test_parse_reads_any_wrapped_valid_reply(entries, before, after) -> None:
    before = before.replace("[", "").replace("{", "")  # text before must not start a JSON value
    parsed = parse_click_output(before + reply(*entries) + after, EXPOSED)
    first: dict[str, bool] = {}
    for ad_id, c in entries:
        first.setdefault(ad_id, c)
    assert parsed.clicked == tuple(a.id for a in EXPOSED if first.get(a.id))
    conflict = any(first[a] != c for a, c in entries)
    assert parsed.malformed == (conflict or len(first) < 2)


# --- competition and nativeness --------------------------------------------------------------

def test_keep_one_per_group() -> None:
    compete = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    keep = keep_one_per_group(np.array([True, True, True]), np.array([0.2, 0.7, 0.1]), compete)
    assert keep.tolist() == [False, True, True]
    # A competitor that was not clicked does not block.
    keep = keep_one_per_group(np.array([True, False, True]), np.array([0.2, 0.7, 0.1]), compete)
    assert keep.tolist() == [True, False, True]
    # Ties: the first exposed wins.
    keep = keep_one_per_group(np.array([True, True]), np.array([0.5, 0.5]), compete[:2, :2])
    assert keep.tolist() == [True, False]


def nativeness_of(text: str, ad_id: str = "Ad-4820") -> float:
    mentions = parse_mentions(text)[0]
    mention = next(m for m in mentions if m.ad_id == ad_id)
    return mention_nativeness(text, mention, mentions)


M = render_mention(SHOES.title, SHOES.id)
T = render_mention(TEA.title, TEA.id)


def test_nativeness_woven_versus_dumped() -> None:
    woven = f"Start slowly. Many runners like {M} because the cushioning saves your knees. Rest."
    assert nativeness_of(woven) == 1.0
    assert nativeness_of(f"Start slowly and rest.\n{M}") == 0.0
    assert nativeness_of(f"Start slowly and rest.\n- {M}") == 0.0
    assert nativeness_of(f"Start slowly. Try {M}!") == pytest.approx(1 / 6)
    listed = f"Rest well. Options: {M}, {T}."
    assert nativeness_of(listed) == pytest.approx(1 / 6)
    assert nativeness_of(listed, TEA.id) == pytest.approx(1 / 6)
    assert mention_nativeness("no mention here", None) == 0.0


# --- embedding judge ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedding_judge(text_encoder, packaged_catalog) -> EmbeddingJudge:
    return make_judge("embedding", RunConfig(), encoder=text_encoder, catalog=packaged_catalog)


RUNNER = make_profile("running_shoes", "cycling")
RUN_QUERY = "Which running shoes should I buy for my first half marathon?"


def woven(*ads: Ad) -> str:
    names = ", and also ".join(render_mention(a.title, a.id) for a in ads)
    return (f"Build up your weekly distance slowly. Many runners in your situation like {names}, "
            "which are comfortable for long training runs. Rest one day a week.")


def request(*ads: Ad, profile=RUNNER, query=RUN_QUERY, response=None) -> ClickRequest:
    text = response if response is not None else woven(*ads)
    return ClickRequest(profile, query, text, tuple(ads), tuple(parse_mentions(text)[0]))


def test_registry() -> None:
    assert {"embedding", "llm", "logprob"} <= set(judge_names())
    with pytest.raises(ValueError, match="did you mean 'embedding'"):
        make_judge("embeding", RunConfig())


def test_default_judge_is_registered() -> None:
    assert RunConfig().clicks.judge in judge_names()


def test_embedding_relevant_ad_more_likely(embedding_judge, packaged_catalog) -> None:
    shoes = packaged_catalog.by_id("Ad-4820")
    tea = packaged_catalog.in_category("tea")[0]
    p = embedding_judge.probabilities([request(shoes), request(tea)])
    assert p[0][shoes.id] > p[1][tea.id] + 0.3
    assert all(0 < v < 1 for d in p for v in d.values())


def test_embedding_more_ads_lower_probability(embedding_judge, packaged_catalog) -> None:
    shoes = packaged_catalog.by_id("Ad-4820")
    others = packaged_catalog.in_category("cycling")
    alone, crowded = embedding_judge.probabilities([request(shoes), request(shoes, *others)])
    assert crowded[shoes.id] < alone[shoes.id]
    # Exactly the fatigue term: two more ads cost 2 * fatigue in the logit.
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert logit(alone[shoes.id]) - logit(crowded[shoes.id]) == pytest.approx(
        2 * embedding_judge.fatigue, abs=1e-6)


def test_embedding_woven_beats_dumped(embedding_judge, packaged_catalog) -> None:
    shoes = packaged_catalog.by_id("Ad-4820")
    dumped = f"Build up your weekly distance slowly and rest one day a week.\n{M}"
    p_woven, p_dumped = embedding_judge.probabilities([request(shoes),
                                                       request(shoes, response=dumped)])
    assert p_woven[shoes.id] > p_dumped[shoes.id]


def test_embedding_at_most_one_click_among_similar(text_encoder, packaged_catalog) -> None:
    sure = EmbeddingJudge(text_encoder, packaged_catalog, bias=20.0)  # every draw clicks
    shoes, trail = packaged_catalog.in_category("running_shoes")
    tea = packaged_catalog.in_category("tea")[0]
    reqs = [request(shoes, trail, tea)] * 20
    for d in sure.judge(reqs, np.random.default_rng(0)):
        assert tea.id in d.clicked
        assert len(set(d.clicked) & {shoes.id, trail.id}) == 1
        kept = next(i for i in d.clicked if i != tea.id)
        assert d.probabilities[kept] == max(d.probabilities[shoes.id], d.probabilities[trail.id])
    # With the cosine threshold at -1 every pair of ads competes: one click per answer.
    rivals = EmbeddingJudge(text_encoder, packaged_catalog, bias=20.0, duplicate_similarity=-1.0)
    assert all(len(d.clicked) == 1 for d in rivals.judge(reqs, np.random.default_rng(0)))


def test_embedding_deterministic_and_seed_dependent(embedding_judge, packaged_catalog) -> None:
    reqs = [request(ad) for ad in packaged_catalog[:40]] + [request()]
    a = embedding_judge.judge(reqs, np.random.default_rng(3))
    b = embedding_judge.judge(reqs, np.random.default_rng(3))
    c = embedding_judge.judge(reqs, np.random.default_rng(4))
    assert a == b
    assert [d.clicked for d in a] != [d.clicked for d in c]
    assert a[-1] == ClickDecision(clicked=())
    assert all(set(d.clicked) <= set(d.probabilities) for d in a)
    # The probabilities do not depend on the batch around a request.
    alone = embedding_judge.probabilities(reqs[5:6])[0]
    assert alone == pytest.approx(a[5].probabilities)


def test_embedding_handles_ads_outside_the_catalog(embedding_judge) -> None:
    ad = Ad("Ad-0042", "Pacewise Marathon Trainers", "running_shoes",
            "Cushioned shoes for marathon training.")
    (p,) = embedding_judge.probabilities([request(ad)])
    (q,) = embedding_judge.probabilities([request(TEA)])
    assert p[ad.id] > q[TEA.id]
    assert embedding_judge.probabilities([]) == []


# --- the labelled set --------------------------------------------------------------------------

def test_labelled_set(packaged_catalog) -> None:
    data = build_labelled_set(201, seed=5, catalog=packaged_catalog)
    assert len(data) == 201 and sum(t.label for t in data) == 101
    again = build_labelled_set(201, seed=5, catalog=packaged_catalog)
    assert data == again
    assert data != build_labelled_set(201, seed=6, catalog=packaged_catalog)
    for t in data:
        r = t.request
        assert t.topic in r.profile.interests and t.topic in packaged_catalog.categories
        assert t.topic.replace("_", " ") in r.query
        if t.label:
            assert t.ad.category == t.topic
        else:
            assert t.ad.category != t.topic and t.ad.category not in r.profile.interests
        assert [m.ad_id for m in r.mentions] == [t.ad.id]
        # The mention sits in the middle sentence, woven in the same way for both labels.
        assert nativeness_of(r.response, t.ad.id) == 1.0
    with pytest.raises(ValueError):
        build_labelled_set(1)


def test_roc_auc() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 60), rng.integers(0, 5, 60).astype(float)  # many ties
    pairs = [(a, b) for a in s[y == 1] for b in s[y == 0]]
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert roc_auc(y, s) == pytest.approx(brute)


def test_default_judge_separates_the_labelled_set(embedding_judge, packaged_catalog) -> None:
    assert RunConfig().clicks.judge == "embedding"
    data = build_labelled_set(200, seed=0, catalog=packaged_catalog)
    probs = embedding_judge.probabilities([t.request for t in data])
    scores = [p[t.ad.id] for p, t in zip(probs, data)]
    assert roc_auc([t.label for t in data], scores) >= 0.9


# --- LLM judges on a tiny random model ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm() -> TransformersLM:
    tokenizer = embedded_tokenizer()
    model = tiny_llama(tokenizer, hidden=32, intermediate=64)
    return TransformersLM(model, tokenizer, name="tiny", max_batch_size=64)


class Counting:
    """Wraps a language model and records its calls."""

    def __init__(self, lm):
        self.lm, self.name = lm, lm.name
        self.generate_calls: list[tuple[int, list[SamplingParams]]] = []
        self.score_calls: list[tuple[int, list[str]]] = []

    def generate(self, prompts, params):
        self.generate_calls.append((len(prompts), list(params)))
        return self.lm.generate(prompts, params)

    def score(self, prompts, continuations):
        self.score_calls.append((len(prompts), list(continuations)))
        return self.lm.score(prompts, continuations)


class Scripted:
    """Replies with fixed texts, in prompt order."""

    name = "scripted"

    def __init__(self, replies):
        self.replies = replies

    def generate(self, prompts, params):
        assert len(prompts) == len(self.replies)
        return [[Completion(text, 5, True)] for text in self.replies]


def config_for_tests() -> RunConfig:
    return RunConfig().with_overrides(["clicks.llm.max_new_tokens=6"])


def mixed_requests() -> list[ClickRequest]:
    return [request(SHOES, TEA), request(response="No product here."), request(TRAIL)]


def test_llm_judge_one_batched_call(tiny_lm) -> None:
    lm = Counting(tiny_lm)
    judge = make_judge("llm", config_for_tests(), user_lm=lm)
    assert isinstance(judge, LLMJudge)
    decisions = judge.judge(mixed_requests(), np.random.default_rng(0))
    assert len(lm.generate_calls) == 1
    count, params = lm.generate_calls[0]
    assert count == 2  # the answer with no inserted ad needs no model call
    assert all(p.max_new_tokens == 6 and p.temperature == 0.3 and p.stop == STOP for p in params)
    assert len({p.seed for p in params}) == 2
    assert len(decisions) == 3
    assert decisions[1] == ClickDecision(clicked=())
    # A random model writes no readable JSON: flagged, and nothing is clicked.
    for d, r in zip(decisions, mixed_requests()):
        assert set(d.clicked) <= {ad.id for ad in r.exposed}
        assert d.malformed == bool(r.exposed)
        assert d.probabilities == {}
    assert judge.judge([request(response="none")], np.random.default_rng(0)) == [
        ClickDecision(clicked=())]
    assert len(lm.generate_calls) == 1


def test_llm_judge_seeds_come_from_rng(tiny_lm) -> None:
    lm = Counting(tiny_lm)
    judge = make_judge("llm", config_for_tests(), user_lm=lm)
    judge.judge(mixed_requests(), np.random.default_rng(1))
    judge.judge(mixed_requests(), np.random.default_rng(1))
    judge.judge(mixed_requests(), np.random.default_rng(2))
    seeds = [[p.seed for p in params] for _, params in lm.generate_calls]
    assert seeds[0] == seeds[1] != seeds[2]


def test_llm_judge_reads_replies() -> None:
    lm = Scripted(["```json\n" + reply(("Ad-4820", True), ("Ad-1111", False)) + "\n```",
                   "I like it"])
    judge = LLMJudge(lm, SamplingParams())
    d = judge.judge(mixed_requests(), np.random.default_rng(0))
    assert d[0] == ClickDecision(clicked=("Ad-4820",))
    assert d[2] == ClickDecision(clicked=(), malformed=True)


def test_logprob_judge_one_batched_call(tiny_lm) -> None:
    lm = Counting(tiny_lm)
    judge = make_judge("logprob", config_for_tests(), user_lm=lm)
    assert isinstance(judge, LogprobJudge)
    reqs = mixed_requests()
    decisions = judge.judge(reqs, np.random.default_rng(0))
    assert len(lm.score_calls) == 1
    count, continuations = lm.score_calls[0]
    assert count == 6 and continuations == ["Yes"] * 3 + ["No"] * 3  # 3 exposed ads
    assert [sorted(d.probabilities) for d in decisions] == [
        sorted(a.id for a in r.exposed) for r in reqs]
    for d in decisions:
        assert all(0 < p < 1 for p in d.probabilities.values())
        assert set(d.clicked) <= set(d.probabilities) and not d.malformed
    assert judge.probabilities(reqs) == [d.probabilities for d in decisions]
    assert judge.judge(reqs, np.random.default_rng(0)) == decisions


def test_logprob_judge_bernoulli_and_non_finite_scores() -> None:
    class Fixed:
        name = "fixed"

        def __init__(self, yes, no):
            self.yes, self.no = yes, no

        def score(self, prompts, continuations):
            n = len(prompts) // 2
            return np.array([self.yes] * n + [self.no] * n)

    reqs = [request(SHOES)] * 2000
    sure = LogprobJudge(Fixed(-0.1, -5.0)).judge(reqs, np.random.default_rng(0))
    p = sure[0].probabilities[SHOES.id]
    assert p == pytest.approx(1 / (1 + np.exp(-4.9)))
    rate = np.mean([SHOES.id in d.clicked for d in sure])
    assert abs(rate - p) < 0.02
    broken = LogprobJudge(Fixed(float("nan"), -1.0)).judge(reqs[:3], np.random.default_rng(0))
    assert all(d.malformed and d.clicked == () and d.probabilities[SHOES.id] == 0.0
               for d in broken)


def test_click_prompts_show_what_the_user_saw() -> None:
    r = request(SHOES, TEA)
    messages = click_judge_messages(r.profile, r.query, r.response, r.exposed)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 2 + ["user"]
    last = messages[-1]["content"]
    assert RUNNER.describe() in last and RUN_QUERY in last and r.response in last
    assert M in last and "Ad-1111 (Tea Garden Sampler)" in last
    for example in messages[2:5:2]:  # the worked examples' replies are valid JSON
        assert isinstance(json.loads(example["content"]), list)
    other = click_judge_messages(make_profile("tea"), "q?", "a", (TEA,))
    assert other[:5] == messages[:5]  # shared prefix for the batch
    question = click_question_messages(r.profile, r.query, r.response, TEA)
    assert question[-1]["content"].endswith(
        "Would this user click on Tea Garden Sampler? Answer yes or no.")
    assert r.response in question[-1]["content"]


@pytest.mark.slow
def test_judges_on_the_embedded_model(packaged_catalog) -> None:
    from llmauction_sim.clicks.llm import load_user_lm

    config = RunConfig().with_overrides(["clicks.llm.max_new_tokens=48"])
    lm = load_user_lm(config)
    data = build_labelled_set(4, seed=0, catalog=packaged_catalog)
    reqs = [t.request for t in data]
    for name in ("logprob", "llm"):
        decisions = make_judge(name, config, user_lm=lm).judge(reqs, np.random.default_rng(0))
        assert len(decisions) == 4
        for d, t in zip(decisions, data):
            assert set(d.clicked) <= {t.ad.id}
    # The instruct model follows the JSON format of the worked example.
    replies = make_judge("llm", config, user_lm=lm).replies(reqs, np.random.default_rng(0))
    assert sum(parse_click_output(r, t.request.exposed).decided == (t.ad.id,)
               for r, t in zip(replies, data)) >= 2
