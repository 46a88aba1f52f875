"""The log-probability click judge: P(yes) per inserted ad from the User-LLM's own scores.

For every (answer, inserted ad) pair the User-LLM gets `click_question_messages` ("Would this user
click on <title>? Answer yes or no.") and one `score` call rates the replies "Yes" and "No" for all
pairs at once. P(click) = exp(lp_yes) / (exp(lp_yes) + exp(lp_no)); the click is a Bernoulli draw.
A pair whose scores are not finite gets P = 0 and flags its decision as malformed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmauction_sim.clicks.base import ClickDecision, ClickModel, ClickRequest, register_judge
from llmauction_sim.clicks.llm import load_user_lm
from llmauction_sim.lm.base import LanguageModel
from llmauction_sim.lm.prompts import click_question_messages

YES, NO = "Yes", "No"  # the chat model's usual first word of a reply; see docs/clicks.md


class LogprobJudge(ClickModel):
    name = "logprob"

    def __init__(self, lm: LanguageModel):
        self.lm = lm

    @classmethod
    def from_config(cls, config, *, user_lm: LanguageModel) -> LogprobJudge:
        return cls(user_lm)

    def _pair_probabilities(self, requests: Sequence[ClickRequest]
                            ) -> tuple[np.ndarray, np.ndarray]:
        """(P(yes) per (request, exposed ad) pair, finite flag per pair), one `score` call."""
        prompts = [click_question_messages(r.profile, r.query, r.response, ad)
                   for r in requests for ad in r.exposed]
        if not prompts:
            return np.zeros(0), np.zeros(0, dtype=bool)
        n = len(prompts)
        scores = np.asarray(self.lm.score(prompts + prompts, [YES] * n + [NO] * n), np.float64)
        yes, no = scores[:n], scores[n:]
        ok = np.isfinite(yes) & np.isfinite(no)
        diff = np.where(ok, yes - no, -np.inf)
        return 0.5 * (1.0 + np.tanh(0.5 * diff)), ok  # sigmoid(lp_yes - lp_no)

    def probabilities(self, requests: Sequence[ClickRequest]) -> list[dict[str, float]]:
        probs, _ = self._pair_probabilities(requests)
        out, k = [], 0
        for r in requests:
            out.append({ad.id: float(probs[k + j]) for j, ad in enumerate(r.exposed)})
            k += len(r.exposed)
        return out

    def judge(self, requests: Sequence[ClickRequest], rng: np.random.Generator
              ) -> list[ClickDecision]:
        probs, ok = self._pair_probabilities(requests)
        clicked = rng.random(len(probs)) < probs
        decisions, k = [], 0
        for r in requests:
            sl = slice(k, k + len(r.exposed))
            k += len(r.exposed)
            decisions.append(ClickDecision(
                clicked=tuple(ad.id for ad, c in zip(r.exposed, clicked[sl]) if c),
                probabilities={ad.id: float(p) for ad, p in zip(r.exposed, probs[sl])},
                malformed=not bool(ok[sl].all())))
        return decisions


def make_logprob_judge(config, *, user_lm=None, encoder=None, catalog=None) -> LogprobJudge:
    """Registered as 'logprob'; loads the User-LLM (`user_llm`) if not given."""
    return LogprobJudge.from_config(config, user_lm=user_lm if user_lm is not None
                                    else load_user_lm(config))


register_judge("logprob", make_logprob_judge,
               "P(yes) per inserted ad from the User-LLM's log-probabilities")
