"""vLLM backend: the `LanguageModel` protocol on vLLM's offline engine (GPU; the `gpu` extra).

Chosen by config (`ad_llm.backend = "vllm"`, `user_llm.backend = "vllm"`). Each sample is its own
request with its own seed (the seeds `sample_seeds` derives, as in the transformers backend), so a
sample does not depend on the rest of the batch; vLLM batches the requests and shares the prompt
prefix in its KV cache. Scoring reads prompt log-probabilities of prompt + continuation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmauction_sim.lm.base import (
    Chat,
    Completion,
    SamplingParams,
    encode_chat,
    expand_params,
    sample_seeds,
)
from llmauction_sim.lm.memory import vllm_engine_args
from llmauction_sim.lm.registry import resolve_model


def vllm_sampling_params(vllm: Any, params: SamplingParams, seed: int):
    """Our per-prompt settings as one vLLM request's `SamplingParams` (n = 1, its own seed)."""
    return vllm.SamplingParams(
        n=1, temperature=params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,  # vLLM: -1 switches top-k off
        max_tokens=params.max_new_tokens, seed=seed, stop=list(params.stop) or None,
        include_stop_str_in_output=True,
        logit_bias={int(t): max(-100.0, min(100.0, float(b)))  # vLLM's range
                    for t, b in params.logit_bias} or None)


def completion_from_output(output: Any) -> Completion:
    """A vLLM `CompletionOutput` as our `Completion` (finished = the model ended its turn)."""
    return Completion(text=output.text.strip(), num_tokens=len(output.token_ids),
                      finished=output.finish_reason == "stop", token_ids=tuple(output.token_ids))


def continuation_logprob(prompt_logprobs: Sequence[Any], token_ids: Sequence[int],
                         start: int) -> float:
    """Sum of log p(token) over positions start.. of a request's `prompt_logprobs`.

    `prompt_logprobs[i]` maps token ids to objects with a `.logprob` (None at position 0).
    """
    total = 0.0
    for pos in range(start, len(token_ids)):
        entry = prompt_logprobs[pos][token_ids[pos]]
        total += float(getattr(entry, "logprob", entry))
    return total


def proposal_logprob(prompt_logprobs: Sequence[Any], token_ids: Sequence[int], start: int,
                     params: SamplingParams) -> float:
    """Sum of log q(token) under `params`' sampling distribution, from prompt log-probs that list
    (at least) the top `params.top_k` tokens per position: softmax of logprob / T over those,
    cut to the smallest prefix reaching mass top_p (log-softmax is shift-invariant, so raw
    log-probs stand in for logits). A token outside the kept set gets its tempered log-prob."""
    total = 0.0
    for pos in range(start, len(token_ids)):
        entries = {int(t): float(getattr(e, "logprob", e))
                   for t, e in prompt_logprobs[pos].items()}
        ranked = sorted(entries.items(), key=lambda kv: -kv[1])[:params.top_k]
        scaled = np.array([v for _, v in ranked]) / params.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        kept = {t: p for (t, _), p, b in zip(ranked, probs, before) if b < params.top_p}
        mass = sum(kept.values())
        token = int(token_ids[pos])
        if token in kept:
            total += float(np.log(kept[token] / mass))
        else:  # tempered, untruncated (normaliser over the listed tokens)
            total += float(entries[token] / params.temperature
                           - np.logaddexp.reduce(scaled))
    return total


class VLLMModel:
    """`LanguageModel` over `vllm.LLM` (offline batched generation and prompt log-probs)."""

    def __init__(self, llm: Any, vllm_module: Any, name: str = "model", seed: int = 0):
        self.llm = llm
        self.vllm = vllm_module
        self.name = name
        self.tokenizer = llm.get_tokenizer()
        self.rng = np.random.default_rng(seed)

    def encode_chat(self, chat: Chat) -> list[int]:
        return encode_chat(self.tokenizer, chat)

    def reload_weights(self) -> None:
        """Read the weights again from the engine's model folder (rewritten by the caller) in
        place, and drop the prefix cache, whose KV entries the old weights computed."""
        self.llm.collective_rpc("reload_weights")
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[Chat],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        params = expand_params(params, len(prompts))
        seeds = sample_seeds(params, self.rng)
        requests, settings = [], []
        for chat, p, row_seeds in zip(prompts, params, seeds):
            ids = self.encode_chat(chat)
            for s in row_seeds:
                requests.append({"prompt_token_ids": ids})
                settings.append(vllm_sampling_params(self.vllm, p, s))
        outputs = self.llm.generate(requests, settings, use_tqdm=False) if requests else []
        results, k = [], 0
        for p in params:
            results.append([completion_from_output(o.outputs[0]) for o in outputs[k:k + p.n]])
            k += p.n
        return results

    def score(self, prompts: Sequence[Chat], continuations: Sequence[str],
              params: SamplingParams | None = None) -> np.ndarray:
        if params is not None and (params.temperature <= 0 or params.top_k <= 0):
            raise ValueError("vLLM scores a sampling distribution from the top-k prompt "
                             "log-probs, so it needs temperature > 0 and top_k > 0 (got "
                             f"temperature={params.temperature}, top_k={params.top_k}); set "
                             "ad_sampling.top_k, or mechanisms.mosaic.correction = 'none'")
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} "
                             "continuations; pass one continuation per prompt")
        requests, starts = [], []
        for chat, cont in zip(prompts, continuations):
            ids = self.encode_chat(chat)
            starts.append(len(ids))
            requests.append({"prompt_token_ids": ids + self.tokenizer(
                cont, add_special_tokens=False)["input_ids"]})
        request = self.vllm.SamplingParams(max_tokens=1, temperature=0.0,
                                           prompt_logprobs=params.top_k if params else 0)
        outputs = self.llm.generate(requests, request, use_tqdm=False) if requests else []
        if params is not None:
            return np.array([proposal_logprob(o.prompt_logprobs, r["prompt_token_ids"], s,
                                              params)
                             for o, r, s in zip(outputs, requests, starts)])
        return np.array([continuation_logprob(o.prompt_logprobs, r["prompt_token_ids"], s)
                         for o, r, s in zip(outputs, requests, starts)])


@functools.lru_cache(maxsize=2)
def _engine(name: str, dtype: str, adapter: str | None,
            gpu_memory_utilization: float | None = None, max_model_len: int | None = None):
    try:
        import vllm
    except ImportError as exc:
        raise RuntimeError("backend = 'vllm' needs vLLM on a GPU machine: pip install "
                           "'llmauction-sim[gpu]' (or use backend = 'transformers')") from exc
    if adapter:
        raise ValueError("backend = 'vllm' does not load PEFT adapters here; merge the adapter "
                         "into a checkpoint (peft merge_and_unload) and set the model name to it")
    # Without these vLLM takes 0.9 of the GPU and the model's full context: the memory plan
    # (lm/memory.py) leaves the trainer and the other engine their share.
    sizes = {k: v for k, v in (("gpu_memory_utilization", gpu_memory_utilization),
                               ("max_model_len", max_model_len)) if v}
    llm = vllm.LLM(model=resolve_model(name), dtype="auto" if dtype == "auto" else dtype,
                   enable_prefix_caching=True, **sizes)
    return llm, vllm


def load_vllm_model(config, seed: int = 0, run_config=None,
                    engine_args: dict | None = None) -> VLLMModel:
    """The vLLM backend's `LanguageModel` for a `ModelConfig`. `engine_args`
    (`gpu_memory_utilization`, `max_model_len`) default to the memory plan of `run_config` (the
    RunConfig it belongs to; `memory.vllm_engine_args`), or to vLLM's own without one."""
    if engine_args is None and run_config is not None:
        engine_args = vllm_engine_args(run_config, config)
    engine_args = engine_args or {}
    llm, vllm = _engine(config.name, config.dtype, config.adapter,
                        engine_args.get("gpu_memory_utilization"),
                        engine_args.get("max_model_len"))
    return VLLMModel(llm, vllm, name=config.name, seed=seed)
