"""LM layer on a tiny random llama with the real SmolLM2 tokenizer and chat template."""

import contextlib
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import embedded_tokenizer, tiny_llama

import llmauction_sim.lm.cascade_attention as cascade
import llmauction_sim.lm.hf as hf
from llmauction_sim.config import ModelConfig, SamplingConfig
from llmauction_sim.lm import registry
from llmauction_sim.lm.base import (
    Completion,
    LanguageModel,
    SamplingParams,
    expand_params,
    sample_seeds,
)
from llmauction_sim.lm.hf import TransformersLM
from llmauction_sim.lm.kv_cache import PreallocatedLayer, compaction_order
from llmauction_sim.lm.registry import (
    ModelNotFoundError,
    load_language_model,
    register_model,
    resolve_model,
)
from llmauction_sim.lm.sampling import proposal_logprobs, sample_tokens

SYSTEM = ("You are a shopping assistant inside a search engine. Answer the user's question "
          "briefly and helpfully, and mention a relevant product from the candidate list only when "
          "it truly fits the question.")
QUESTIONS = [
    "hi",
    "What running shoes should I buy for my first marathon next spring?",
    "tell me about tents",
    "Is a cast iron pan worth it?",
    "a b c d e f g h i j k l m n o p",
]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)
# Sampling tests that compare runs whose batches differ use top_k=20 (the project's setting): the
# random model's distribution is nearly flat, and over the whole vocabulary float rounding of the
# logits reorders near-tied tokens (see test_sample_tokens_continuous_in_logits).


def chat(question: str, system: str | None = SYSTEM) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": question}]


PROMPTS = [chat(q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer)


@pytest.fixture(scope="module")
def lm(model, tokenizer) -> TransformersLM:
    return TransformersLM(model, tokenizer, name="tiny", max_batch_size=64)


def texts(result: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in row] for row in result]


def greedy_ids(model, ids: list[int], steps: int) -> list[int]:
    mask = torch.ones(1, len(ids), dtype=torch.long)
    out = model.generate(torch.tensor([ids]), attention_mask=mask, do_sample=False,
                         max_new_tokens=steps, pad_token_id=model.config.pad_token_id)
    return out[0, len(ids):].tolist()


# --- generate: shapes and limits -------------------------------------------------------------

def test_protocol(lm: TransformersLM) -> None:
    assert isinstance(lm, LanguageModel)
    assert lm.name == "tiny"
    assert lm.tokenizer.eos_token_id in lm.stop_ids.tolist()
    assert lm.tokenizer.convert_tokens_to_ids("<|im_end|>") in lm.stop_ids.tolist()


def test_generate_shape_and_order(lm: TransformersLM) -> None:
    params = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=6, n=2, seed=1)
    result = lm.generate(PROMPTS, params)
    assert len(result) == len(PROMPTS)
    for row in result:
        assert len(row) == 2
        for c in row:
            assert isinstance(c, Completion)
            assert 1 <= c.num_tokens <= 6
            assert c.finished or c.num_tokens == 6
    # Prompt order: row i is what prompt i gives alone.
    for i, prompt in enumerate(PROMPTS):
        assert texts(lm.generate([prompt], params))[0] == texts(result)[i]
    assert lm.generate([], params) == []


def test_per_prompt_max_new_tokens(lm: TransformersLM) -> None:
    lengths = [1, 5, 3, 12, 2]
    params = [SamplingParams(temperature=1.0, max_new_tokens=k, n=2, seed=i)
              for i, k in enumerate(lengths)]
    result = lm.generate(PROMPTS, params)
    for k, row in zip(lengths, result, strict=True):
        assert len(row) == 2
        for c in row:
            assert c.num_tokens <= k
            # A random model almost never ends its turn: the limit is what stops it.
            assert c.finished or c.num_tokens == k
    assert sum(c.num_tokens for row in result for c in row) > 2 * sum(lengths) - 4


def test_per_prompt_n(lm: TransformersLM) -> None:
    params = [SamplingParams(temperature=1.0, max_new_tokens=3, n=n, seed=5) for n in (1, 4, 2)]
    result = lm.generate(PROMPTS[:3], params)
    assert [len(row) for row in result] == [1, 4, 2]


def test_params_count_mismatch(lm: TransformersLM) -> None:
    with pytest.raises(ValueError, match="2 sampling params for 3 prompts"):
        lm.generate(PROMPTS[:3], [GREEDY, GREEDY])


# --- greedy ----------------------------------------------------------------------------------

def test_greedy_texts_are_informative(lm: TransformersLM) -> None:
    """The comparisons below would be vacuous if the model produced empty or equal texts."""
    outs = [row[0].text for row in lm.generate(PROMPTS, GREEDY)]
    assert all(outs)
    assert len(set(outs)) >= 3


def test_prompts_share_a_long_prefix(lm: TransformersLM) -> None:
    encoded = [lm.encode_chat(p) for p in PROMPTS]
    shared = hf.common_prefix_len(encoded)
    assert shared >= hf.MIN_SHARED_PREFIX
    assert len({len(e) for e in encoded}) == len(encoded)  # different lengths: padding is used


def test_greedy_batched_equals_alone(lm: TransformersLM, monkeypatch) -> None:
    batched = texts(lm.generate(PROMPTS, GREEDY))
    alone = [texts(lm.generate([p], GREEDY))[0] for p in PROMPTS]
    assert batched == alone
    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 10**9)
    assert texts(lm.generate(PROMPTS, GREEDY)) == batched


def test_greedy_without_system_message(lm: TransformersLM, monkeypatch) -> None:
    prompts = [chat(q, system=None) for q in QUESTIONS]
    batched = texts(lm.generate(prompts, GREEDY))
    assert batched == [texts(lm.generate([p], GREEDY))[0] for p in prompts]
    monkeypatch.setattr(hf, "MIN_SHARED_PREFIX", 10**9)
    assert texts(lm.generate(prompts, GREEDY)) == batched


def test_greedy_equals_hf_generate(lm: TransformersLM, model, tokenizer) -> None:
    for question in (QUESTIONS[1], QUESTIONS[4]):
        prompt = chat(question)
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        assert ids == lm.encode_chat(prompt)
        new = greedy_ids(model, ids, 10)
        expected = tokenizer.decode(new, skip_special_tokens=True).strip()
        (c,) = lm.generate([prompt], SamplingParams(temperature=0, max_new_tokens=10))[0]
        assert expected
        assert c.text == expected
        assert c.num_tokens == len(new) == 10 and not c.finished


def test_greedy_samples_all_equal(lm: TransformersLM) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=8, n=3, seed=0)
    result = texts(lm.generate(PROMPTS[:3], params))
    alone = [texts(lm.generate([p], GREEDY))[0][0] for p in PROMPTS[:3]]
    for row, expected in zip(result, alone, strict=True):
        assert row == [expected] * 3


def test_small_max_batch_size_same_greedy(model, tokenizer, lm: TransformersLM) -> None:
    small = TransformersLM(model, tokenizer, name="tiny", max_batch_size=2)
    assert texts(small.generate(PROMPTS, GREEDY)) == texts(lm.generate(PROMPTS, GREEDY))


def test_one_row_prefill_windows_same_greedy(model, tokenizer, lm: TransformersLM) -> None:
    # Windows of one row: each computes only its own prompt's width and leaves a zeroed gap.
    narrow = TransformersLM(model, tokenizer, name="tiny", prefill_rows=1)
    assert texts(narrow.generate(PROMPTS, GREEDY)) == texts(lm.generate(PROMPTS, GREEDY))


def test_cpu_kernels_same_greedy_and_scores(model, tokenizer, lm: TransformersLM,
                                            monkeypatch) -> None:
    plain = TransformersLM(model, tokenizer, name="tiny", cpu_kernels=False)
    calls = []
    kernel = cascade.decode_attention
    monkeypatch.setattr(cascade, "decode_attention", lambda *a: calls.append(kernel(*a)) or calls[-1])
    assert texts(plain.generate(PROMPTS, GREEDY)) == texts(lm.generate(PROMPTS, GREEDY))
    assert calls and all(c is not None for c in calls), "decode steps ran on the kernel"
    answers = [c[0].text for c in lm.generate(PROMPTS, GREEDY)]
    np.testing.assert_allclose(plain.score(PROMPTS, answers), lm.score(PROMPTS, answers),
                               rtol=1e-4, atol=1e-3)


def test_small_max_batch_size_same_seeded_samples(model, tokenizer, lm: TransformersLM) -> None:
    # n=3 per prompt with batches of 2 rows: one prompt's samples land in different batches.
    params = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=6, n=3, seed=11)
    small = TransformersLM(model, tokenizer, name="tiny", max_batch_size=2)
    assert texts(small.generate(PROMPTS, params)) == texts(lm.generate(PROMPTS, params))


# --- seeded sampling -------------------------------------------------------------------------

def test_seeded_sampling_reproducible(lm: TransformersLM) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=123)
    first = texts(lm.generate(PROMPTS[:3], params))
    assert texts(lm.generate(PROMPTS[:3], params)) == first
    other = texts(lm.generate(PROMPTS[:3], SamplingParams(temperature=1.0, max_new_tokens=8, n=2,
                                                           seed=124)))
    assert other != first
    assert all(a != b for row_a, row_b in zip(first, other, strict=True)
               for a, b in zip(row_a, row_b, strict=True))


def test_seeded_sampling_independent_of_batch(lm: TransformersLM) -> None:
    params = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=8, seed=7)
    alone = texts(lm.generate([PROMPTS[2]], params))[0]
    others = [SamplingParams(temperature=1.0, top_k=20, max_new_tokens=k, seed=100 + k)
              for k in (2, 8, 5)]
    batch = [PROMPTS[0], PROMPTS[2], PROMPTS[4], PROMPTS[1]]
    mixed = texts(lm.generate(batch, [others[0], params, others[1], others[2]]))
    assert mixed[1] == alone


def test_seeded_sampling_independent_of_other_rows_top_k(lm: TransformersLM) -> None:
    params = SamplingParams(temperature=1.0, top_k=5, max_new_tokens=8, seed=3)
    alone = texts(lm.generate([PROMPTS[0]], params))[0]
    other = SamplingParams(temperature=1.0, top_k=0, max_new_tokens=3, seed=4)
    mixed = texts(lm.generate([PROMPTS[0], PROMPTS[1]], [params, other]))
    assert mixed[0] == alone


def test_samples_of_one_prompt_differ(lm: TransformersLM) -> None:
    (row,) = texts(lm.generate([PROMPTS[1]], SamplingParams(temperature=1.0, max_new_tokens=8,
                                                            n=3, seed=5)))
    assert len(set(row)) > 1


def test_sample_seeds_prefix_consistent_in_generate(lm: TransformersLM) -> None:
    params = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=6, n=3, seed=9)
    three = texts(lm.generate([PROMPTS[3]], params))[0]
    five = texts(lm.generate([PROMPTS[3]], dataclasses.replace(params, n=5)))[0]
    assert five[:3] == three


def test_unseeded_sampling_varies_between_calls(lm: TransformersLM) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=8)
    assert texts(lm.generate([PROMPTS[0]], params)) != texts(lm.generate([PROMPTS[0]], params))


def test_unseeded_sampling_reproducible_from_lm_seed(model, tokenizer) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    a = TransformersLM(model, tokenizer, seed=5).generate(PROMPTS[:2], params)
    b = TransformersLM(model, tokenizer, seed=5).generate(PROMPTS[:2], params)
    c = TransformersLM(model, tokenizer, seed=6).generate(PROMPTS[:2], params)
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)


# --- stopping --------------------------------------------------------------------------------

@contextlib.contextmanager
def end_turn_from(model, position: int):
    """Make the model choose its end-of-turn token at every position >= `position`.

    Rows of one batch have different prompt lengths, so they end after different numbers of
    tokens: a row whose prompt has L tokens ends with generated token ``max(0, position - L + 1)``.
    """
    eos = model.config.eos_token_id

    def hook(module, args, kwargs, output):
        positions = kwargs.get("position_ids")
        if positions is not None:  # the shared-prefix pass has none, and its logits are unused
            rows = positions[:, -1] >= position
            output.logits[rows, -1, eos] = 1e4
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def test_stops_on_first_token(lm: TransformersLM, model) -> None:
    prompt_len = len(lm.encode_chat(PROMPTS[1]))
    with end_turn_from(model, prompt_len - 1):
        (c,) = lm.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=10))[0]
    assert c == Completion(text="", num_tokens=1, finished=True)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_end_at_their_own_step(lm: TransformersLM, model, tokenizer,
                                    temperature: float) -> None:
    lengths = [len(lm.encode_chat(p)) for p in PROMPTS]
    position = sorted(lengths)[2] + 2
    max_new = 8
    params = SamplingParams(temperature=temperature, top_k=20, max_new_tokens=max_new, seed=3)
    free = lm.generate(PROMPTS, params)
    with end_turn_from(model, position):
        ended = lm.generate(PROMPTS, params)
    kinds = set()
    for length, (f,), (e,) in zip(lengths, free, ended, strict=True):
        k = max(0, position - length + 1)  # index of the forced end-of-turn token
        assert not f.finished and f.num_tokens == max_new
        if k >= max_new:
            assert e == f
            kinds.add("limit")
        else:
            assert e.finished and e.num_tokens == k + 1
            kinds.add("first" if k == 0 else "middle")
            if temperature == 0 and k > 0:
                new = greedy_ids(model, lm.encode_chat(PROMPTS[lengths.index(length)]), k)
                assert e.text == tokenizer.decode(new, skip_special_tokens=True).strip()
            # The tokens before the end are those of the free run (same seed, same stream).
            assert f.text.startswith(e.text)
    assert kinds == {"first", "middle", "limit"}


def test_end_on_last_allowed_token_is_finished(lm: TransformersLM, model) -> None:
    prompt_len = len(lm.encode_chat(PROMPTS[1]))
    with end_turn_from(model, prompt_len + 2):
        (c,) = lm.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=4))[0]
    assert c.finished and c.num_tokens == 4
    with end_turn_from(model, prompt_len + 3):
        (c,) = lm.generate([PROMPTS[1]], SamplingParams(temperature=0, max_new_tokens=4))[0]
    assert not c.finished and c.num_tokens == 4


# --- score -----------------------------------------------------------------------------------

def manual_score(model, tokenizer, lm: TransformersLM, prompt, continuation: str) -> float:
    p = lm.encode_chat(prompt)
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not c:
        return 0.0
    with torch.no_grad():
        logits = model(torch.tensor([p + c])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))


SCORE_CASES = [
    (PROMPTS[0], "Hello! How can I help you today?"),
    (PROMPTS[1], "Try @Ad-1001@[Acme Runner]."),
    (PROMPTS[2], "ok"),
    (PROMPTS[3], "Yes: it lasts for decades, heats evenly and goes from stove to oven."),
    (chat("hi", system=None), "A somewhat longer continuation, with punctuation; and more words."),
]


@pytest.mark.parametrize("max_batch_size", [64, 2])
def test_score_matches_manual(model, tokenizer, lm, max_batch_size: int) -> None:
    scorer = TransformersLM(model, tokenizer, max_batch_size=max_batch_size)
    prompts = [p for p, _ in SCORE_CASES]
    continuations = [c for _, c in SCORE_CASES]
    got = scorer.score(prompts, continuations)
    assert isinstance(got, np.ndarray) and got.shape == (len(SCORE_CASES),)
    expected = [manual_score(model, tokenizer, lm, p, c) for p, c in SCORE_CASES]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert (got < 0).all()
    assert len(set(np.round(got, 3))) == len(got)


def test_score_empty_continuation(lm: TransformersLM) -> None:
    assert lm.score([PROMPTS[0]], [""]).tolist() == [0.0]
    got = lm.score([PROMPTS[0], PROMPTS[1], PROMPTS[2]], ["", "some words", ""])
    assert got[0] == 0.0 and got[2] == 0.0
    assert got[1] == pytest.approx(lm.score([PROMPTS[1]], ["some words"])[0], abs=1e-4)


def test_score_under_sampling_params(lm: TransformersLM) -> None:
    prompts = [p for p, _ in SCORE_CASES]
    continuations = [c for _, c in SCORE_CASES]
    plain = lm.score(prompts, continuations)
    # T = 1 without truncation is the model itself; a proposal at T < 1 with top-k differs.
    own = lm.score(prompts, continuations, SamplingParams(temperature=1.0, top_k=0, top_p=1.0))
    np.testing.assert_allclose(own, plain, atol=1e-4)
    tempered = lm.score(prompts, continuations, SamplingParams(temperature=0.7, top_k=20,
                                                               top_p=0.8))
    assert tempered.shape == plain.shape and np.isfinite(tempered).all()
    assert not np.allclose(tempered, plain, atol=1e-2)


def test_score_empty_batch(lm: TransformersLM) -> None:
    assert lm.score([], []).shape == (0,)


def test_score_length_mismatch(lm: TransformersLM) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 continuations"):
        lm.score(PROMPTS[:2], ["x"])


# --- sample_tokens ---------------------------------------------------------------------------

LOGITS = torch.tensor([[1.0, 3.0, 0.5, 2.0, -1.0, 2.9]])
BEST = 1


def draw(logits, temp: float, top_k: int, top_p: float, seed: int, rows: int = 1):
    seeds = torch.arange(seed * 100_000, seed * 100_000 + rows)
    return sample_tokens(logits.expand(rows, -1).clone(), torch.full((rows,), temp),
                         torch.full((rows,), top_k), torch.full((rows,), top_p), seeds, 0)


def test_sample_tokens_greedy_is_argmax() -> None:
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    got = sample_tokens(logits, torch.zeros(8), torch.zeros(8, dtype=torch.long), torch.ones(8),
                        torch.arange(8), 0)
    assert got.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("temp", [0.0, 0.5, 1.0, 5.0])
def test_sample_tokens_top_k_1_is_argmax(temp: float) -> None:
    assert set(draw(LOGITS, temp, 1, 1.0, seed=0, rows=200).tolist()) == {BEST}


@pytest.mark.parametrize("temp", [0.7, 1.0, 3.0])
def test_sample_tokens_tiny_top_p_is_argmax(temp: float) -> None:
    assert set(draw(LOGITS, temp, 0, 1e-6, seed=0, rows=200).tolist()) == {BEST}


def test_sample_tokens_top_k_2_keeps_two_best() -> None:
    got = draw(LOGITS, 5.0, 2, 1.0, seed=0, rows=2000).tolist()
    assert set(got) == {1, 5}


def test_sample_tokens_top_p_keeps_nucleus() -> None:
    probs = torch.softmax(LOGITS[0], -1)  # sorted: 1 (.37), 5 (.33), 3 (.14), ...
    top_p = float(probs[1] + probs[5]) + 0.01  # reaching it needs exactly three tokens
    got = draw(LOGITS, 1.0, 0, top_p, seed=0, rows=3000).tolist()
    assert set(got) == {1, 5, 3}


def test_sample_tokens_frequencies_match_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, -0.5, 0.5]])
    n = 4000
    got = draw(logits, 1.0, 0, 1.0, seed=0, rows=n)
    freq = np.bincount(got.numpy(), minlength=4) / n
    np.testing.assert_allclose(freq, torch.softmax(logits[0], -1).numpy(), atol=0.03)


def test_sample_tokens_temperature_sharpens() -> None:
    logits = torch.tensor([[0.0, 1.0, -0.5, 0.5]])
    n = 4000
    cold = np.bincount(draw(logits, 0.25, 0, 1.0, seed=0, rows=n).numpy(), minlength=4) / n
    expected = torch.softmax(logits[0] / 0.25, -1).numpy()
    np.testing.assert_allclose(cold, expected, atol=0.03)


def test_sample_tokens_same_seed_same_draws() -> None:
    a = draw(LOGITS, 1.0, 0, 1.0, seed=42, rows=300)
    b = draw(LOGITS, 1.0, 0, 1.0, seed=42, rows=300)
    c = draw(LOGITS, 1.0, 0, 1.0, seed=43, rows=300)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_tokens_rows_use_own_settings() -> None:
    logits = LOGITS.expand(3, -1).clone()
    for step in range(50):
        got = sample_tokens(logits, torch.tensor([0.0, 5.0, 5.0]), torch.tensor([0, 1, 2]),
                            torch.tensor([1.0, 1.0, 1.0]), torch.arange(3), step).tolist()
        assert got[0] == BEST and got[1] == BEST and got[2] in (1, 5)


def test_sample_tokens_row_stream_independent_of_other_rows() -> None:
    def run(with_neighbour: bool) -> list[int]:
        rows = 2 if with_neighbour else 1
        out = []
        for step in range(30):
            got = sample_tokens(LOGITS.expand(rows, -1).clone(), torch.full((rows,), 2.0),
                                torch.tensor([2, 0][:rows]), torch.ones(rows),
                                torch.tensor([0, 1][:rows]), step)
            out.append(int(got[0]))
        return out

    assert run(True) == run(False)


def test_sample_tokens_continuous_in_logits() -> None:
    logits = torch.tensor([[1.0, 0.5 + 1e-6, 0.5, 0.0]])
    nudged = torch.tensor([[1.0, 0.5, 0.5 + 1e-6, 0.0]])
    a = draw(logits, 1.0, 0, 1.0, seed=0, rows=1000)
    b = draw(nudged, 1.0, 0, 1.0, seed=0, rows=1000)
    assert int((a != b).sum()) <= 10


# --- SamplingParams, expand_params, sample_seeds ---------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"n": 0}, "n = 0"),
])
def test_sampling_params_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_sampling_params_from_config() -> None:
    p = SamplingParams.from_config(SamplingConfig(), n=3, seed=4)
    assert (p.temperature, p.top_p, p.top_k, p.max_new_tokens, p.n, p.seed) == \
        (0.7, 0.8, 20, 160, 3, 4)


def test_expand_params() -> None:
    p = SamplingParams(seed=1)
    assert expand_params(p, 3) == [p, p, p]
    ps = [SamplingParams(seed=i) for i in range(2)]
    assert expand_params(ps, 2) == ps
    assert expand_params(tuple(ps), 2) == ps
    with pytest.raises(ValueError, match="got 2 sampling params for 3 prompts"):
        expand_params(ps, 3)


def test_sample_seeds_prefix_consistent() -> None:
    rng = np.random.default_rng(0)
    three = sample_seeds([SamplingParams(n=3, seed=17)], rng)[0]
    five = sample_seeds([SamplingParams(n=5, seed=17)], rng)[0]
    assert five[:3] == three
    assert len(set(five)) == 5
    assert all(0 <= s < 2**63 for s in five)


def test_sample_seeds_from_rng_when_unseeded() -> None:
    params = [SamplingParams(n=2), SamplingParams(n=2, seed=3), SamplingParams(n=2)]
    a = sample_seeds(params, np.random.default_rng(1))
    b = sample_seeds(params, np.random.default_rng(1))
    c = sample_seeds(params, np.random.default_rng(2))
    assert a == b
    assert a[1] == c[1]  # an explicit seed ignores the rng
    assert a[0] != c[0] and a[0] != a[2]
    assert [len(s) for s in a] == [2, 2, 2]


# --- registry --------------------------------------------------------------------------------

def test_resolve_missing_local_path(tmp_path: Path) -> None:
    path = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(path))
    message = str(info.value)
    assert "Tried:" in message
    assert registry.EMBEDDED_MODEL in message  # the registered names, and the fix
    assert str(path) in message and "does not exist" in message
    assert "Fix:" in message and "config.json" in message


def test_resolve_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_resolve_unknown_hub_id_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("no-such-org-xyz/no-such-model-xyz")
    message = str(info.value)
    assert "Hugging Face id 'no-such-org-xyz/no-such-model-xyz'" in message
    assert "huggingface-cli download" in message


def test_resolve_local_checkpoint(tmp_path: Path, model, tokenizer, lm) -> None:
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert Path(resolve_model(str(folder))) == folder
    # The folder loads as a language model that behaves like the one it was saved from.
    loaded = load_language_model(ModelConfig(name=str(folder), dtype="float32", device="cpu"))
    assert texts(loaded.generate(PROMPTS[:2], GREEDY)) == texts(lm.generate(PROMPTS[:2], GREEDY))


def test_register_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("my-model", lambda: tmp_path, "a test model")
    assert resolve_model("my-model") == tmp_path
    assert "my-model" in registry.registered_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("my-model", lambda: tmp_path)


def test_backends_dispatch_by_config(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    assert {"transformers", "vllm"} <= set(registry.registered_backends())
    registry.register_backend("echo", f"{__name__}:_echo_backend", "test backend")
    config = SimpleNamespace(backend="echo")
    assert load_language_model(config, seed=5, run_config="run") == (config, 5, "run")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_backend("echo", f"{__name__}:_echo_backend")
    with pytest.raises(ValueError, match="module:function"):
        registry.register_backend("bad", "no_colon")
    with pytest.raises(ValueError, match="unknown backend 'nope'.*transformers"):
        load_language_model(SimpleNamespace(backend="nope"))


def _echo_backend(config, seed, run_config):
    return config, seed, run_config


def test_embedded_model_is_converted() -> None:
    folder = Path(resolve_model(registry.EMBEDDED_MODEL))
    assert (folder / "config.json").is_file()
    assert folder.name == registry.EMBEDDED_MODEL


@pytest.mark.parametrize("q_len, padded", [(1, False), (1, True), (5, False), (5, True)])
def test_cascade_attention_equals_attention_over_the_full_sequence(q_len, padded) -> None:
    """Prefix stored once + per-row part, merged by log-sum-exp == SDPA on [prefix | rows]."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    b, heads, kv_heads, d, prefix, own = 3, 6, 2, 16, 7, 9
    query = torch.randn(b, heads, q_len, d)
    key, value = torch.randn(b, kv_heads, own, d), torch.randn(b, kv_heads, own, d)
    pk, pv = torch.randn(1, kv_heads, prefix, d), torch.randn(1, kv_heads, prefix, d)
    allowed = torch.ones(b, 1, q_len, own, dtype=torch.bool).tril(own - q_len)
    if padded:
        allowed[0, :, :, :2] = False  # row 0 is left-padded by two tokens
    module = SimpleNamespace(shared_prefix_kv=(pk, pv), num_key_value_groups=heads // kv_heads)
    out, _ = cascade.cascade_attention(module, query, key, value, allowed, scaling=d ** -0.5)

    full_k = torch.cat([pk.expand(b, -1, -1, -1), key], 2).repeat_interleave(3, dim=1)
    full_v = torch.cat([pv.expand(b, -1, -1, -1), value], 2).repeat_interleave(3, dim=1)
    full_mask = torch.cat([torch.ones(b, 1, q_len, prefix, dtype=torch.bool), allowed], -1)
    ref = torch.nn.functional.scaled_dot_product_attention(query, full_k, full_v,
                                                           attn_mask=full_mask)
    rows = slice(2, None) if padded and q_len > 1 else slice(None)  # pad queries are don't-care
    torch.testing.assert_close(out[:, rows], ref.transpose(1, 2)[:, rows])


def test_cascade_generation_equals_copied_prefix(model, tokenizer, lm: TransformersLM) -> None:
    assert lm.attention, "the tiny llama runs SDPA, so generation uses cascade attention"
    copied = TransformersLM(model, tokenizer, name="tiny-copied")
    copied.attention = {}  # the shared prefix is then copied into every row
    params = SamplingParams(temperature=0.7, top_k=20, max_new_tokens=12, seed=3)
    assert texts(lm.generate(PROMPTS, params)) == texts(copied.generate(PROMPTS, params))
    assert texts(lm.generate(PROMPTS, GREEDY)) == texts(copied.generate(PROMPTS, GREEDY))


# --- proposal_logprobs: the sampler's own distribution -----------------------------------------

@pytest.mark.parametrize("temp,top_k,top_p", [(0.7, 0, 1.0), (0.7, 4, 0.8), (2.0, 3, 1.0),
                                              (1.0, 0, 0.6)])
def test_proposal_logprobs_are_the_sampling_frequencies(temp, top_k, top_p) -> None:
    logits = LOGITS
    targets = torch.arange(logits.shape[-1])[None, :, None]  # every token as a target
    q = proposal_logprobs(logits[:, None].expand(1, logits.shape[-1], -1), targets[..., 0],
                             SamplingParams(temperature=temp, top_k=top_k, top_p=top_p)).exp()[0]
    n = 6000
    got = draw(logits, temp, top_k, top_p, seed=3, rows=n)
    freq = np.bincount(got.numpy(), minlength=logits.shape[-1]) / n
    kept = freq > 0
    # Kept tokens: q matches the sampler's frequencies and sums to one over them.
    np.testing.assert_allclose(q.numpy()[kept], freq[kept], atol=0.025)
    assert float(q[torch.from_numpy(kept)].sum()) == pytest.approx(1.0, abs=1e-5)


def test_proposal_logprobs_greedy_and_vllm_agree() -> None:
    from llmauction_sim.lm.vllm import proposal_logprob

    logits = torch.randn(1, 5, 40, generator=torch.Generator().manual_seed(1))
    targets = logits.topk(3, -1).indices[..., 1]  # the second-best token at every position
    greedy = proposal_logprobs(logits, targets, SamplingParams(temperature=0.0))
    assert torch.isinf(greedy).all()
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9)
    ours = float(proposal_logprobs(logits, targets, params).sum())
    # vLLM's prompt log-probs (raw log-softmax, top-k listed) give the same proposal.
    raw = torch.log_softmax(logits[0], -1)
    listed = [None] + [{int(t): float(raw[i, t]) for t in raw[i].topk(5).indices}
                       | {int(targets[0, i]): float(raw[i, targets[0, i]])} for i in range(5)]
    ids = [0] + targets[0].tolist()
    assert proposal_logprob(listed, ids, 1, params) == pytest.approx(ours, abs=1e-4)


# --- dropping finished rows --------------------------------------------------------------------

@pytest.mark.parametrize("live", [[1, 0, 1, 1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1]])
def test_compaction_moves_only_tail_rows_into_holes(live: list[int]) -> None:
    live_t = torch.tensor(live, dtype=torch.bool)
    order = compaction_order(live_t)
    assert sorted(order.tolist()) == live_t.nonzero().squeeze(1).tolist()
    n = len(order)
    assert all(i == j for i, j in enumerate(order.tolist()) if j < n)  # rows in place stay

    layer = PreallocatedLayer(capacity=6)
    layer.allocate(len(live), 2, 4, torch.float32, torch.device("cpu"))
    layer.update(torch.randn(len(live), 2, 3, 4), torch.randn(len(live), 2, 3, 4))
    expected_k, expected_v = layer.keys[order].clone(), layer.values[order].clone()
    layer.batch_select_indices(order)
    torch.testing.assert_close(layer.keys, expected_k)
    torch.testing.assert_close(layer.values, expected_v)
    layer.update(torch.zeros(n, 2, 1, 4), torch.zeros(n, 2, 1, 4))  # still writable after
    assert layer.keys.shape == (n, 2, 4, 4)


def test_select_with_repeats_gathers() -> None:
    layer = PreallocatedLayer(capacity=4)
    layer.allocate(2, 1, 2, torch.float32, torch.device("cpu"))
    layer.update(torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2))
    before = layer.keys.clone()
    layer.batch_select_indices(torch.tensor([0, 0, 1, 1]))  # samples of each prompt
    torch.testing.assert_close(layer.keys, before[[0, 0, 1, 1]])
