"""The vLLM backend's request/response translation, on a stand-in for the `vllm` module.

vLLM needs a GPU; these tests check what our code sends and how it reads the answers, and
experiments/gpu_check.sh runs the real engine on a GPU machine.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer

from llmauction_sim.lm import registry
from llmauction_sim.lm.base import SamplingParams, sample_seeds
from llmauction_sim.lm.vllm import VLLMModel, continuation_logprob, vllm_sampling_params


class FakeVllm:
    """Records requests; `SamplingParams` keeps its keyword arguments."""

    class SamplingParams(SimpleNamespace):
        pass


class FakeLLM:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append((requests, params))
        if isinstance(params, list):  # generation: echo the seed, stop at "stop" for even seeds
            return [SimpleNamespace(outputs=[SimpleNamespace(
                text=f" seed {p.seed} ", token_ids=[1, 2, 3],
                finish_reason="stop" if p.seed % 2 == 0 else "length")]) for p in params]
        # scoring: every prompt token gets log-prob -0.5 (position 0 has none)
        return [SimpleNamespace(prompt_logprobs=[None] + [
            {t: SimpleNamespace(logprob=-0.5)} for t in r["prompt_token_ids"][1:]])
            for r in requests]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(registry.resolve_model(registry.EMBEDDED_MODEL))


def test_sampling_params_translation() -> None:
    p = SamplingParams(temperature=0.7, top_p=0.8, top_k=0, max_new_tokens=40, stop=("]",))
    v = vllm_sampling_params(FakeVllm, p, seed=11)
    assert (v.n, v.temperature, v.top_p, v.top_k, v.max_tokens, v.seed) == (1, 0.7, 0.8, -1, 40, 11)
    assert v.stop == ["]"] and v.include_stop_str_in_output is True
    assert vllm_sampling_params(FakeVllm, SamplingParams(top_k=20), 1).top_k == 20
    assert vllm_sampling_params(FakeVllm, SamplingParams(), 1).stop is None


def test_generate_one_request_per_sample_with_our_seeds(tokenizer) -> None:
    llm = FakeLLM(tokenizer)
    model = VLLMModel(llm, FakeVllm, name="fake", seed=0)
    chats = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "tents?"}]]
    params = [SamplingParams(n=2, seed=5), SamplingParams(n=3, seed=6)]
    out = model.generate(chats, params)
    assert [len(x) for x in out] == [2, 3] and len(llm.calls) == 1  # one batched call
    seeds = [s for row in sample_seeds(params, np.random.default_rng(0)) for s in row]
    requests, sent = llm.calls[0]
    assert [p.seed for p in sent] == seeds
    assert requests[0]["prompt_token_ids"] == model.encode_chat(chats[0])
    flat = [c for row in out for c in row]
    assert [c.text for c in flat] == [f"seed {s}" for s in seeds]
    assert [c.finished for c in flat] == [s % 2 == 0 for s in seeds]
    assert all(c.num_tokens == 3 for c in flat)


def test_score_sums_the_continuation_log_probs(tokenizer) -> None:
    model = VLLMModel(FakeLLM(tokenizer), FakeVllm)
    chats = [[{"role": "user", "content": "Would you click?"}]] * 2
    scores = model.score(chats, ["Yes", "No, thanks"])
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in ("Yes",
                                                                                  "No, thanks")]
    np.testing.assert_allclose(scores, [-0.5 * n for n in lengths])
    with pytest.raises(ValueError, match="one continuation per prompt"):
        model.score(chats, ["Yes"])


def test_continuation_logprob_reads_plain_floats() -> None:
    assert continuation_logprob([None, {7: -1.0}, {8: -2.0}], [1, 7, 8], start=1) == -3.0


def test_reload_weights_rereads_the_folder_and_drops_the_prefix_cache(tokenizer) -> None:
    llm = FakeLLM(tokenizer)
    rpc = []
    llm.collective_rpc = lambda method, *a, **k: rpc.append(method)
    llm.reset_prefix_cache = lambda: rpc.append("reset_prefix_cache")
    VLLMModel(llm, FakeVllm).reload_weights()
    assert rpc == ["reload_weights", "reset_prefix_cache"]
