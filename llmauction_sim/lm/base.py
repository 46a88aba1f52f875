"""The language-model protocol every backend implements: batched generation and batched scoring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}
Chat = Sequence[Message]


@dataclass(frozen=True)
class SamplingParams:
    """Per-prompt sampling settings. temperature 0 is greedy; top_k 0 and top_p 1 switch those off.

    `stop`: strings that end a sample as soon as a generated token contains one; the text is cut
    right after the stop string, which is kept (vLLM's ``include_stop_str_in_output=True``).
    `logit_bias`: (token id, bias) pairs added to the logits before temperature and truncation
    (vLLM's and OpenAI's `logit_bias`); -inf bans a token.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also rejects nan
            raise ValueError(f"temperature = {self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p = {self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k = {self.top_k} must be >= 0 (0 = off)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens = {self.max_new_tokens} must be >= 1")
        if self.n < 1:
            raise ValueError(f"n = {self.n} must be >= 1")
        if isinstance(self.stop, str) or not all(isinstance(x, str) and x for x in self.stop):
            raise ValueError(f"stop = {self.stop!r} must be a tuple of non-empty strings")
        if not all(len(x) == 2 and int(x[0]) >= 0 and x[1] == x[1] for x in self.logit_bias):
            raise ValueError(f"logit_bias = {self.logit_bias!r} must be (token id >= 0, bias) "
                             "pairs with no NaN bias")

    @classmethod
    def from_config(cls, config, **overrides) -> SamplingParams:
        """From a `SamplingConfig` section; keyword arguments override or add fields."""
        fields = {"temperature": config.temperature, "top_p": config.top_p,
                  "top_k": config.top_k, "max_new_tokens": config.max_new_tokens}
        return cls(**{**fields, **overrides})


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finished: bool  # True when the model ended its turn, False when max_new_tokens cut it off
    # The sampled token ids, without the end-of-turn token (a stop string cuts `text`, not these).
    token_ids: tuple[int, ...] = ()


@runtime_checkable
class LanguageModel(Protocol):
    """What mechanisms, judges and writers need from a model; backends differ only in speed."""

    name: str

    def generate(self, prompts: Sequence[Chat],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[list[Completion]]:
        """One list of `params.n` completions per prompt, in prompt order."""
        ...

    def score(self, prompts: Sequence[Chat], continuations: Sequence[str],
              params: SamplingParams | None = None) -> np.ndarray:
        """Sum of log-probabilities of each continuation as the assistant's reply to its prompt:
        under the model itself, or with `params` under the sampling distribution they define
        (temperature, then top-k, then top-p, as `generate` samples): the proposal probability
        an importance weight divides by."""
        ...


@runtime_checkable
class SampleScorer(Protocol):
    """A model that scores several answers per prompt at once (the transformers backend)."""

    def score_samples(self, prompts: Sequence[Chat], samples: Sequence[Sequence[str]],
                      params: SamplingParams | None = None
                      ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        ...


def score_samples(lm: LanguageModel, prompts: Sequence[Chat], samples: Sequence[Sequence[str]],
                  params: SamplingParams | None = None
                  ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(log p, log q under `params` or None) of every answer in `samples` (a list per prompt):
    the model's own `score_samples` where it has one, else `score` once or twice."""
    if isinstance(lm, SampleScorer):
        return lm.score_samples(prompts, samples, params)
    repeated = [p for p, answers in zip(prompts, samples) for _ in answers]
    flat = [a for answers in samples for a in answers]
    cuts = np.cumsum([len(answers) for answers in samples])[:-1]
    ref = np.split(np.asarray(lm.score(repeated, flat), np.float64), cuts)
    if params is None:
        return ref, None
    return ref, np.split(np.asarray(lm.score(repeated, flat, params), np.float64), cuts)


def encode_chat(tokenizer, chat: Chat) -> list[int]:
    """Token ids of `chat` with the assistant's turn opened; when the last message is the
    assistant's, its text is continued (a partly written answer) instead."""
    messages = list(chat)
    partial = bool(messages) and messages[-1]["role"] == "assistant"
    text = tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=not partial,
                                         continue_final_message=partial)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def samples_from_model(params: SamplingParams) -> bool:
    """True when `params` sample from the model's own distribution (T = 1, no truncation)."""
    return (params.temperature == 1.0 and params.top_k == 0 and params.top_p == 1.0
            and not params.logit_bias)


def expand_params(params: SamplingParams | Sequence[SamplingParams], count: int
                  ) -> list[SamplingParams]:
    if isinstance(params, SamplingParams):
        return [params] * count
    params = list(params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} sampling params for {count} prompts; pass one "
                         "SamplingParams for all prompts or one per prompt")
    return params


def sample_seeds(params: Sequence[SamplingParams], rng: np.random.Generator) -> list[list[int]]:
    """One seed per (prompt, sample): from the prompt's seed when given, else from `rng`."""
    seeds = []
    for p in params:
        base = p.seed if p.seed is not None else int(rng.integers(2**63))
        states = np.random.SeedSequence(base).generate_state(p.n, dtype=np.uint64)
        seeds.append([int(s) & (2**63 - 1) for s in states])
    return seeds
