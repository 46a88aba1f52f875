"""Every dtype path of the transformers backend, on every machine: float32, bfloat16 and float16.

`dtype=auto` picks bfloat16 where the CPU has native bf16 and float32 elsewhere, so each machine
runs one path in practice; these tests run all of them (bf16 is emulated, slowly but correctly,
on AVX2-only CPUs, and the tiny model is cheap). Low-precision numerics depend on a row's place in
its batch (oneDNN's blocking), so exact text equality is asked only in float32; in the other dtypes
every greedy token must be the argmax of a float32 pass over the same weights up to a rounding
tolerance, far below the gap a wrong cache, position, mask or merge would leave (a random token
sits ~0.5 below the argmax on the tiny model; bf16 rounding moves it by < 0.002).
"""

import dataclasses

import pytest
import torch
from tiny_models import embedded_tokenizer, tiny_llama

from llmauction_sim.lm.base import SamplingParams
from llmauction_sim.lm.cascade_attention import cascade_attention
from llmauction_sim.lm.cpu_kernels import fast_cpu_inference
from llmauction_sim.lm.devices import cpu_description, cpu_supports_bf16, resolve_dtype
from llmauction_sim.lm.hf import TransformersLM

DTYPES = ["float32", "bfloat16", "float16"]
# Largest allowed (float32 max logit - float32 logit of the token chosen in the dtype).
ARGMAX_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 5e-3}
SYSTEM = ("You are a shopping assistant inside a search engine. Answer the user's question "
          "briefly and helpfully, and mention a relevant product from the candidate list only when "
          "it truly fits the question.")
QUESTIONS = ["hi", "What running shoes should I buy for my first marathon next spring?",
             "tell me about tents", "Is a cast iron pan worth it?",
             "a b c d e f g h i j k l m n o p"]
PROMPTS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
           for q in QUESTIONS]


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


@pytest.fixture(scope="module")
def reference(tokenizer):
    """The float32 model whose weights every dtype's model rounds."""
    return tiny_llama(tokenizer)


def model_in(reference, dtype: str):
    """`reference` rounded to `dtype`, and a float32 model with exactly the rounded weights."""
    model = tiny_llama(embedded_tokenizer()).to(getattr(torch, dtype))
    model.load_state_dict(reference.state_dict())
    exact = tiny_llama(embedded_tokenizer())
    exact.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return model, exact


@pytest.fixture(scope="module", params=DTYPES)
def models(request, reference):
    return request.param, *model_in(reference, request.param)


def assert_reference_argmax(lm: TransformersLM, exact, prompts, completions, tol: float) -> None:
    """Each generated token is the float32 argmax given the tokens before it (within `tol`)."""
    for chat, row in zip(prompts, completions):
        prompt = lm.encode_chat(chat)
        for c in row:
            assert c.token_ids, "every prompt generates at least one token here"
            ids = torch.tensor([prompt + list(c.token_ids)])
            with torch.inference_mode():
                logits = exact(ids).logits[0, len(prompt) - 1:-1]
            chosen = logits.gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            gap = logits.max(-1).values - chosen
            assert float(gap.max()) <= tol, (
                f"token {int(gap.argmax())} of {c.text!r} is {float(gap.max()):.4f} below the "
                f"float32 argmax")


# --- attention: the shared-prefix merge and the decode kernel's fallback -----------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q_len, padded", [(1, False), (1, True), (5, True)])
@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("decode_kernel", [True, False])
def test_cascade_attention_matches_float32_definition(dtype, q_len, padded, prefix,
                                                       decode_kernel) -> None:
    """[shared prefix | own tokens] attention in any dtype == float32 SDPA on the rounded inputs.
    With `decode_kernel` set, float32 decode steps run the numba kernel and the others fall back."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(q_len)
    b, heads, kv_heads, d, n_prefix, own = 3, 6, 2, 16, 7, 9
    dt = getattr(torch, dtype)
    query = torch.randn(b, heads, q_len, d, generator=gen).to(dt)
    # Keys and values as views of a preallocated buffer, as the decode kernel expects them.
    k_buf = torch.randn(b, kv_heads, own + 4, d, generator=gen).to(dt)
    v_buf = torch.randn(b, kv_heads, own + 4, d, generator=gen).to(dt)
    key, value = k_buf[:, :, :own], v_buf[:, :, :own]
    pk = torch.randn(1, kv_heads, n_prefix, d, generator=gen).to(dt)
    pv = torch.randn(1, kv_heads, n_prefix, d, generator=gen).to(dt)
    allowed = torch.ones(b, 1, q_len, own, dtype=torch.bool).tril(own - q_len)
    if padded:
        allowed[0, :, :, :2] = False  # row 0 is left-padded by two tokens
    module = SimpleNamespace(shared_prefix_kv=(pk, pv) if prefix else None,
                             num_key_value_groups=heads // kv_heads, decode_kernel=decode_kernel,
                             is_causal=True, training=False)
    out, _ = cascade_attention(module, query, key, value, allowed, scaling=d ** -0.5)
    assert out.dtype == dt and out.shape == (b, q_len, heads, d)

    full_k, full_v, full_mask = key.float(), value.float(), allowed
    if prefix:
        full_k = torch.cat([pk.float().expand(b, -1, -1, -1), full_k], 2)
        full_v = torch.cat([pv.float().expand(b, -1, -1, -1), full_v], 2)
        full_mask = torch.cat([torch.ones(b, 1, q_len, n_prefix, dtype=torch.bool), allowed], -1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        query.float(), full_k.repeat_interleave(3, dim=1), full_v.repeat_interleave(3, dim=1),
        attn_mask=full_mask).transpose(1, 2)
    rows = slice(2, None) if padded and q_len > 1 else slice(None)  # pad queries are don't-care
    tol = {"float32": 1e-5, "bfloat16": 3e-2, "float16": 3e-3}[dtype]
    torch.testing.assert_close(out[:, rows].float(), ref[:, rows], rtol=tol, atol=tol)


# --- generation and scoring in every dtype -------------------------------------------------------

VARIANTS = {
    "default": {},
    "copied_prefix": {"attention": {}},  # the shared prefix copied into every row
    "one_row_prefill_windows": {"prefill_rows": 1},
    "batches_of_two": {"max_batch_size": 2},
    "without_cpu_kernels": {"cpu_kernels": False},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_tokens_are_the_float32_argmax(models, tokenizer, variant) -> None:
    dtype, model, exact = models
    settings = dict(VARIANTS[variant])
    attention = settings.pop("attention", None)
    lm = TransformersLM(model, tokenizer, name=f"tiny-{dtype}", **settings)
    if attention is not None:
        lm.attention = attention
    assert bool(lm.attention) == (attention is None)
    # Several samples per prompt and rows that end at different steps: repeated rows and the
    # compaction of finished rows run too.
    params = [SamplingParams(temperature=0.0, max_new_tokens=4 + 2 * i, n=2)
              for i in range(len(PROMPTS))]
    out = lm.generate(PROMPTS, params)
    assert [[c.num_tokens for c in row] for row in out] == [[p.max_new_tokens] * 2
                                                            for p in params]
    assert_reference_argmax(lm, exact, PROMPTS, out, ARGMAX_TOLERANCE[dtype])


def test_greedy_texts_equal_across_dtypes_where_rounding_allows(reference, tokenizer) -> None:
    """float32 is batch-invariant: its greedy texts equal plain transformers `generate`'s."""
    lm = TransformersLM(reference, tokenizer, name="tiny-float32")
    out = lm.generate(PROMPTS, SamplingParams(temperature=0.0, max_new_tokens=8))
    for chat, (c,) in zip(PROMPTS, out):
        ids = torch.tensor([lm.encode_chat(chat)])
        hf_ids = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=8, pad_token_id=lm.pad_id)[0, ids.shape[1]:]
        assert list(c.token_ids) == hf_ids.tolist()


def test_scores_match_float32(models, tokenizer) -> None:
    dtype, model, exact = models
    lm = TransformersLM(model, tokenizer, name=f"tiny-{dtype}", max_batch_size=2)
    conts = ["Try the Summit Trek Boots.", "Yes", "A tent for two.", "", "x y z"]
    got = lm.score(PROMPTS, conts)
    want = TransformersLM(exact, tokenizer, name="tiny-exact").score(PROMPTS, conts)
    tol = {"float32": 1e-4, "bfloat16": 0.2, "float16": 0.02}[dtype]  # nats over ~10 tokens
    assert got == pytest.approx(want, abs=tol)


def test_seeded_sampling_reproducible_and_inside_the_top_k(models, tokenizer) -> None:
    dtype, model, exact = models
    lm = TransformersLM(model, tokenizer, name=f"tiny-{dtype}")
    params = SamplingParams(temperature=0.8, top_k=5, max_new_tokens=8, n=3, seed=11)
    first = lm.generate(PROMPTS, params)
    assert lm.generate(PROMPTS, params) == first
    for chat, row in zip(PROMPTS, first):
        prompt = lm.encode_chat(chat)
        for c in row:
            with torch.inference_mode():
                logits = exact(torch.tensor([prompt + list(c.token_ids)])).logits[0]
            allowed = logits[len(prompt) - 1:-1].topk(8, dim=-1).indices  # top 5, and a margin
            assert all(t in allowed[j] for j, t in enumerate(c.token_ids))


def test_fast_cpu_inference_only_patches_float32(models) -> None:
    dtype, model, _ = models
    with fast_cpu_inference(model):
        flagged = any(getattr(m, "decode_kernel", False) for m in model.modules())
    assert flagged == (dtype == "float32" and torch.backends.mkldnn.is_available())


# --- dtype=auto ----------------------------------------------------------------------------------

def test_auto_dtype_rule(monkeypatch) -> None:
    import llmauction_sim.lm.devices as devices

    for native, want in [(True, torch.bfloat16), (False, torch.float32)]:
        monkeypatch.setattr(devices, "cpu_supports_bf16", lambda native=native: native)
        assert resolve_dtype("auto", torch.device("cpu")) is want
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_cpu_description_names_the_simd_flags() -> None:
    text = cpu_description()
    assert "[" in text and text.endswith("]")
    assert ("avx512_bf16" in text or "amx_tile" in text) >= cpu_supports_bf16()


# --- the embedded model: float32 and bfloat16 agree ----------------------------------------------

def ad_llm_prompts(catalog, count: int):
    from llmauction_sim.domain.users import generate_profiles
    from llmauction_sim.lm.prompts import ad_llm_messages

    questions = ["Which running shoes are best for my first marathon?",
                 "How do I brew a strong cup of tea without bitterness?",
                 "What should I pack for a weekend of camping in the rain?",
                 "How can I make my home office more comfortable?"]
    ads = list(catalog)
    prompts = []
    for i, (profile, question) in enumerate(zip(generate_profiles(count, 0, catalog),
                                                questions[:count])):
        candidates = ads[7 * i:7 * i + 4]
        bids = {ad.id: 10 + 23 * j for j, ad in enumerate(candidates)}
        prompts.append(ad_llm_messages(profile, question, candidates, bids))
    return prompts


@pytest.mark.slow
def test_embedded_model_float32_and_bfloat16_agree(packaged_catalog) -> None:
    """Greedy answers to Ad-LLM prompts in bf16 are, token by token, near the float32 argmax, and
    their float32 log-probability per token is close to float32's own greedy answer's."""
    from llmauction_sim.config import ModelConfig
    from llmauction_sim.lm.registry import load_language_model

    prompts = ad_llm_prompts(packaged_catalog, 4)
    config = ModelConfig(dtype="float32", device="cpu")
    f32 = load_language_model(config)
    b16 = load_language_model(dataclasses.replace(config, dtype="bfloat16"))
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    want = f32.generate(prompts, params)
    got = b16.generate(prompts, params)
    lp_want = f32.score(prompts, [row[0].text for row in want])
    lp_got = f32.score(prompts, [row[0].text for row in got])
    per_token = (lp_want - lp_got) / [row[0].num_tokens for row in got]
    assert max(per_token) < 0.25, per_token
    # The first tokens agree (bf16 rounding can flip a near-tie later in an answer).
    agree = [w[0].token_ids[:4] == g[0].token_ids[:4] for w, g in zip(want, got)]
    assert sum(agree) >= 3, [(w[0].text, g[0].text) for w, g in zip(want, got)]


def test_score_options_equal_scoring_each_option(models, tokenizer) -> None:
    """One pass over the prompt and its options on the prompt's cache == scoring each option as a
    continuation on its own (a partly written answer is continued)."""
    dtype, model, _ = models
    lm = TransformersLM(model, tokenizer, name=f"tiny-{dtype}")
    prompts = [PROMPTS[1], [*PROMPTS[2], {"role": "assistant", "content": "Sure, try @"}],
               PROMPTS[0]]
    options = [["Acme@[Ad-0001]", "Bolt Trail Shoes@[Ad-0002]", "x"],
               ["Tent Co@[Ad-0003]", "Summit Trek Boots@[Ad-0101]"], []]
    got = lm.score_options(prompts, options, rows_per_batch=2)
    tol = {"float32": 1e-4, "bfloat16": 0.2, "float16": 0.02}[dtype]
    for p, opts, values in zip(prompts, options, got):
        assert len(values) == len(opts)
        if opts:
            assert values == pytest.approx(lm.score([p] * len(opts), opts), abs=tol)


def test_score_samples_equal_scoring_each_answer_twice(models, tokenizer) -> None:
    """MOSAIC's one pass (prompt once, answers on its cache, log p and log q from the same logits)
    == `score` of each answer as a full sequence, untempered and under the sampling settings."""
    dtype, model, _ = models
    lm = TransformersLM(model, tokenizer, name=f"tiny-{dtype}", max_batch_size=3)
    prompts = PROMPTS[:3]
    answers = [["Try the Summit Trek Boots.", "Yes", ""], ["A tent for two.", "x y z"], ["No."]]
    params = SamplingParams(temperature=0.7, top_p=0.8, top_k=20)
    log_p, log_q = lm.score_samples(prompts, answers, params)
    only_p, none = lm.score_samples(prompts, answers)
    assert none is None
    tol = {"float32": 1e-4, "bfloat16": 0.2, "float16": 0.02}[dtype]
    for chat, texts, p, q, p2 in zip(prompts, answers, log_p, log_q, only_p):
        assert len(p) == len(q) == len(texts)
        assert p == pytest.approx(lm.score([chat] * len(texts), texts), abs=tol)
        assert q == pytest.approx(lm.score([chat] * len(texts), texts, params), abs=tol)
        assert p2 == pytest.approx(p, abs=tol)
    assert log_p[0][2] == log_q[0][2] == 0.0  # an empty answer has probability one
    with pytest.raises(ValueError, match="one list per prompt"):
        lm.score_samples(prompts, answers[:2])


def test_score_samples_falls_back_to_score_for_other_backends() -> None:
    from llmauction_sim.lm.base import score_samples

    class Scorer:  # a backend with `score` only (vLLM, test doubles)
        def score(self, prompts, continuations, params=None):
            return [len(c) + (0.5 if params else 0.0) for c in continuations]

    p, q = score_samples(Scorer(), ["a", "b"], [["xx", "y"], ["zzz"]], SamplingParams())
    assert [list(v) for v in p] == [[2.0, 1.0], [3.0]]
    assert [list(v) for v in q] == [[2.5, 1.5], [3.5]]
    assert score_samples(Scorer(), ["a"], [["xx"]])[1] is None
