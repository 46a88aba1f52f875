"""`llm_auction_tilted`: the paper's optimal allocation policy, applied at decoding time.

The paper's continuity theorem characterises the IRPO optimum as pi*(y) proportional to
pi_0(y) exp(R(y)/beta): training only approximates it. This mechanism samples from that tilt where
the answer's allocation is decided, in one pass and without training:

- **Which ad.** When pi_0 opens a mention (writes ``@``), the candidates' mentions are scored under
  pi_0 given the answer so far, q_i = pi_0(``Title@[ID]`` | prefix) renormalised over the candidates
  not yet mentioned, and ad i is written with probability

      P(i) proportional to q_i exp(u_i / T),  u_i = b_i pCTR_i - lambda c_k,

  where c_k is the format penalty's cost of a k-th ad (per_ad, plus flooding beyond free_ads):
  u_i is ad i's contribution to the paper's reward R(y). The mention is written exactly, so the
  tilted decoder makes no format errors.
- **Whether to mention.** While a mention is still allowed, every token that opens one (contains
  ``@``) gets the logit bias log Z with Z = sum_i qbar_i exp(u_i / T), the expected tilt of the
  mention it would open (qbar: the candidates' choice probabilities at the answer's start). At each
  step this is the one-step tilt P(open) = p Z / (p Z + 1 - p); the value of not opening a mention
  now is taken as that of no ad. After `max_ads` mentions, opening tokens are banned.

P(i) and P(open) are increasing and continuous in every b_i (derivatives bounded by pCTR_i / T), so
the allocation is monotone and continuous in the bids by construction; T -> infinity gives pi_0
itself (bid-blind), T -> 0 the argmax of b_i pCTR_i. pCTR_i is the click model's probability of ad i
in a templated sentence (`mechanisms.pctr.template_pctr`), known before the answer is written.
Payment: first price per click.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmauction_sim.config import TiltedConfig
from llmauction_sim.domain.mentions import format_penalty, render_mention, validate_response
from llmauction_sim.lm.base import LanguageModel, SamplingParams
from llmauction_sim.lm.prompts import ad_llm_messages
from llmauction_sim.mechanisms.base import (
    Allocation,
    AuctionRequest,
    FirstPricePerClick,
    policy_lm_and_catalog,
    register_mechanism,
)
from llmauction_sim.mechanisms.pctr import load_click_model, template_pctr

MENTION_OPEN = "@"


@dataclass(frozen=True)
class TiltedAllocation(Allocation):
    """The answer plus, per mention written, the tilted choice distribution it was drawn from."""

    choices: tuple[dict, ...] = ()  # {ad_id: P(ad)} at each mention, in order
    pctr: dict | None = None  # {ad_id: pCTR used in u_i}


def ad_utilities(bids: Sequence[float], pctr: Sequence[float], penalty, lam: float,
                 position: int) -> np.ndarray:
    """u_i = b_i pCTR_i - lam * (cost of a `position`-th ad, 1-based) per candidate."""
    cost = penalty.per_ad + (penalty.flooding if position > penalty.free_ads else 0.0)
    return np.asarray(bids, np.float64) * np.asarray(pctr, np.float64) - lam * cost


def tilted_choice(log_q: np.ndarray, utilities: np.ndarray, temperature: float) -> np.ndarray:
    """P(i) proportional to q_i exp(u_i / T), from log q (any constant offset) and u."""
    z = np.asarray(log_q, np.float64) + np.asarray(utilities, np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def log_mention_value(log_q: np.ndarray, utilities: np.ndarray, temperature: float) -> float:
    """log Z = log sum_i q_i exp(u_i / T), q = softmax(log_q): the logit bias of opening tokens."""
    log_q = np.asarray(log_q, np.float64)
    log_q = log_q - np.logaddexp.reduce(log_q)
    return float(np.logaddexp.reduce(log_q + np.asarray(utilities, np.float64) / temperature))


def open_probability(p: float, log_z: float) -> float:
    """The one-step tilt of opening a mention: p Z / (p Z + 1 - p)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return float(1.0 / (1.0 + np.exp(np.log1p(-p) - np.log(p) - log_z)))


def mention_logprobs(lm: LanguageModel, prompts: Sequence, prefixes: Sequence[str],
                     requests: Sequence[AuctionRequest], candidate_ids: Sequence[Sequence[str]]
                     ) -> list[np.ndarray]:
    """log pi(mention of each listed candidate | prompt, prefix) per row, up to a constant per
    row: an answer that starts with its mention has prefix ""; otherwise the prefix ends with the
    opening ``@`` (a token of its own in the tokenizers used here), whose probability is common to
    every candidate and cancels when the choice is renormalised. A backend with `score_options`
    runs each prompt and prefix once for all its candidates."""
    chats, options = [], []
    for prompt, prefix, r, ids in zip(prompts, prefixes, requests, candidate_ids):
        titles = r.candidate_titles()
        mentions = [render_mention(titles[ad_id], ad_id) for ad_id in ids]
        chats.append(_continued(prompt, prefix))
        options.append([m[len(MENTION_OPEN):] if prefix else m for m in mentions])
    if hasattr(lm, "score_options"):
        return lm.score_options(chats, options)
    flat_chats = [c for c, opts in zip(chats, options) for _ in opts]
    scores = lm.score(flat_chats, [o for opts in options for o in opts]) if flat_chats else []
    out, k = [], 0
    for opts in options:
        out.append(np.asarray(scores[k:k + len(opts)], np.float64))
        k += len(opts)
    return out


def _join(prefix: str, text: str) -> str:
    """`prefix` continued by a completion whose leading whitespace the backend stripped."""
    if prefix and text and (text[0].isalnum() or text[0] in "(\"'") and not prefix[-1].isspace():
        return f"{prefix} {text}"
    return prefix + text


class TiltedMechanism(FirstPricePerClick):
    name = "llm_auction_tilted"

    def __init__(self, lm: LanguageModel, click_model, sampling, penalty, catalog_ids,
                 prompt=None, temperature: float = 5.0, max_ads: int = 2, lam: float = 1.0):
        self.lm = lm
        self.click_model = click_model
        # Which click model the pCTR comes from, for the run summary.
        self.pctr_model = getattr(click_model, "name", type(click_model).__name__)
        self.sampling = sampling
        self.penalty = penalty
        self.catalog_ids = frozenset(catalog_ids)
        self.prompt = prompt
        self.temperature = temperature
        self.max_ads = max_ads
        self.lam = lam
        tokenizer = getattr(lm, "tokenizer", None)
        if tokenizer is None:
            raise TypeError(f"{self.name} needs a backend with a tokenizer (to find the tokens "
                            "that open a mention)")
        self.open_tokens = tuple(i for i in range(len(tokenizer))
                                 if MENTION_OPEN in tokenizer.decode([i]))

    def allocate(self, requests: Sequence[AuctionRequest], rng: np.random.Generator
                 ) -> list[Allocation]:
        if not requests:
            return []
        prompts = [ad_llm_messages(r.profile, r.query, r.candidates, r.bids, self.prompt)
                   for r in requests]
        seeds = rng.integers(0, 2**63, (len(requests), self.max_ads + 1))
        pctr = template_pctr(self.click_model, requests)
        remaining = [[ad.id for ad in r.candidates] for r in requests]
        start_log_q = mention_logprobs(self.lm, prompts, [""] * len(requests), requests, remaining)
        prefixes = [""] * len(requests)
        choices: list[list[dict]] = [[] for _ in requests]
        active = list(range(len(requests)))
        for k in range(self.max_ads + 1):
            if not active:
                break
            params, chats = [], []
            for row in active:
                r = requests[row]
                if k < self.max_ads:
                    left = remaining[row]
                    keep = [i for i, ad in enumerate(r.candidates) if ad.id in left]
                    u = ad_utilities([r.bids[a] for a in left], [pctr[row][a] for a in left],
                                     self.penalty, self.lam, k + 1)
                    bias = log_mention_value(start_log_q[row][keep], u, self.temperature)
                    stop = (MENTION_OPEN,)
                else:  # the last mention is written: no more may open
                    bias, stop = float("-inf"), ()
                params.append(SamplingParams.from_config(
                    self.sampling, seed=int(seeds[row, k]), stop=stop,
                    logit_bias=tuple((t, bias) for t in self.open_tokens)))
                chats.append(_continued(prompts[row], prefixes[row]))
            outputs = self.lm.generate(chats, params)
            opened = []
            for row, out in zip(active, outputs):
                prefixes[row] = _join(prefixes[row], out[0].text)
                if k < self.max_ads and prefixes[row].endswith(MENTION_OPEN):
                    opened.append(row)
            if opened:
                log_q = mention_logprobs(self.lm, [prompts[row] for row in opened],
                                           [prefixes[row] for row in opened],
                                           [requests[row] for row in opened],
                                           [remaining[row] for row in opened])
                for row, lq in zip(opened, log_q):
                    r, left = requests[row], remaining[row]
                    u = ad_utilities([r.bids[a] for a in left], [pctr[row][a] for a in left],
                                     self.penalty, self.lam, k + 1)
                    probs = tilted_choice(lq, u, self.temperature)
                    # Each auction's draws come from its own seeds, so its answer does not depend
                    # on the other auctions of the batch (paired comparisons, bid sweeps).
                    pick = left[int(np.random.default_rng(int(seeds[row, k])).choice(
                        len(left), p=probs))]
                    choices[row].append(dict(zip(left, map(float, probs))))
                    prefixes[row] += render_mention(r.candidate_titles()[pick],
                                                    pick)[len(MENTION_OPEN):]
                    remaining[row] = [a for a in left if a != pick]
            active = opened
        allocations: list[Allocation] = []
        for row, r in enumerate(requests):
            text = prefixes[row].strip()
            report = validate_response(text, r.candidate_titles(), self.catalog_ids)
            allocations.append(TiltedAllocation(text, report, format_penalty(report, self.penalty),
                                                choices=tuple(choices[row]), pctr=pctr[row]))
        return allocations


def _continued(prompt, prefix: str):
    """The prompt, with the answer written so far as a partial assistant message."""
    if not prefix:
        return prompt
    return [*prompt, {"role": "assistant", "content": prefix}]


def _tilted(config, *, settings: TiltedConfig, ad_lm=None, catalog=None, click_model=None,
            encoder=None, user_lm=None, **_):
    ad_lm, catalog = policy_lm_and_catalog(config, ad_lm, catalog)
    click_model = load_click_model(config, click_model=click_model, encoder=encoder,
                                   catalog=catalog, user_lm=user_lm)
    return TiltedMechanism(ad_lm, click_model, config.ad_sampling, config.penalty, catalog.ids,
                           config.ad_prompt, settings.temperature, settings.max_ads,
                           settings.penalty_weight)


register_mechanism("llm_auction_tilted", _tilted,
                   "the paper's optimal policy pi_0 exp(R/beta) applied at decoding time",
                   config_class=TiltedConfig)
