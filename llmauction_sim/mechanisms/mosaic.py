"""`mosaic` (Soumalias, Curry and Seuken, NeurIPS 2025): post-generation selection among M answers.

Per query: sample M answers from the Ad-LLM in ONE generate call (n = M), score each with

    R(y) = sum over validly exposed ads i of b_i pCTR_i(y) - lambda s_resp(y)

(pCTR from the click model that `mechanisms.pctr_model` names, `pctr_model` on the mechanism,
inside the actual answer), read log pi_ref(y) with the model's own `score`, and select one
answer with the self-normalised importance weights for the target pi_ref(y) exp(R(y)/tau)
(`mosaic_weights`): w ~ exp(R/tau) pi_ref(y) / q(y), where q is the distribution the
samples came from (ad_sampling's temperature, top-k, top-p; scored by
`score(..., params)`). With q = pi_ref (T = 1, no truncation) this is softmax(R/tau), and
`mechanisms.mosaic.correction = "none"` uses softmax(R/tau) whatever q is. As M grows the
selection converges to the KL-regularised optimum with beta = tau; a proposal far from pi_ref
makes the weights uneven (few samples carry the mass), which `effective_samples` reports.

Payments per click: 'first_price' (own bid, the paper's rule) or 'rochet': with the samples held
fixed, ad i's expected ITCTR x_i(z) as its bid z varies is non-decreasing
(`mosaic_allocation_curve`); the Myerson payment p_i = b_i x_i(b_i) - int_0^{b_i} x_i is
charged per click as p_i / x_i(b_i), so its expectation equals p_i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmauction_sim.config import MosaicConfig
from llmauction_sim.domain.mentions import (
    exposure_revenue,
    format_penalty,
    net_reward,
    validate_response,
)
from llmauction_sim.domain.payments import first_price_per_click, myerson_payment
from llmauction_sim.lm.base import LanguageModel, SamplingParams, samples_from_model, score_samples
from llmauction_sim.lm.prompts import ad_llm_messages
from llmauction_sim.mechanisms.base import (
    Allocation,
    AuctionRequest,
    Mechanism,
    policy_lm_and_catalog,
    register_mechanism,
)
from llmauction_sim.mechanisms.pctr import load_click_model, response_pctr

# ------------------------------------------------------------------------------------------------
# The selection over M sampled answers (pure numpy)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - np.max(z)
    e = np.exp(z)
    return e / e.sum()


def mosaic_weights(rewards: np.ndarray, tau: float, log_ref: np.ndarray | None = None,
                   log_proposal: np.ndarray | None = None) -> np.ndarray:
    """Self-normalised importance weights of M sampled answers for the target pi_ref e^{R/tau}.

    With answers y_1..y_M drawn from a proposal q, the target p*(y) proportional to
    pi_ref(y) exp(R(y)/tau) is approximated by the weighted sample with
    w_j proportional to p*(y_j) / q(y_j) = exp(R(y_j)/tau + log pi_ref(y_j) - log q(y_j)).
    When the answers are drawn from pi_ref itself (q = pi_ref) the ratio is 1 and the weights are
    softmax(R/tau) over the samples; that is the default (both log arguments None).
    Selecting y_j with probability w_j converges to p* as M grows (self-normalised importance
    sampling is consistent).
    """
    logits = np.asarray(rewards, np.float64) / float(tau)
    if log_ref is not None:
        logits = logits + np.asarray(log_ref, np.float64)
    if log_proposal is not None:
        logits = logits - np.asarray(log_proposal, np.float64)
    return softmax(logits)


def mosaic_allocation_curve(rewards: np.ndarray, ctr_i: np.ndarray, bid_i: float, tau: float,
                            grid: np.ndarray, log_ratio: np.ndarray | None = None) -> np.ndarray:
    """Expected ITCTR of ad i as its bid moves over `grid`, the samples held fixed.

    Rewards are linear in b_i: R_j(z) = R_j + (z - b_i) ctr_ij (ctr_ij = 0 where i is not in y_j),
    so x_i(z) = sum_j w_j(z) ctr_ij is non-decreasing in z: the selection is monotone, and the
    Myerson payment of this curve is MOSAIC's Rochet-style payment for the given samples.
    """
    ctr_i = np.asarray(ctr_i, np.float64)
    base = np.asarray(rewards, np.float64) - bid_i * ctr_i
    logits = (base[None, :] + np.asarray(grid, np.float64)[:, None] * ctr_i[None, :]) / tau
    if log_ratio is not None:
        logits = logits + np.asarray(log_ratio, np.float64)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    return w @ ctr_i


@dataclass(frozen=True)
class MosaicAllocation(Allocation):
    """The selected answer plus what its selection saw: every sample's reward, pCTRs, weights."""

    chosen: int = 0
    rewards: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    log_ref: tuple[float, ...] = ()
    sample_pctr: tuple[dict, ...] = ()  # {ad_id: pCTR} of the valid ads of each sample
    tau: float = 1.0
    log_ratio: tuple[float, ...] = ()  # log pi_ref(y) - log q(y) per sample (empty: none)

    @property
    def effective_samples(self) -> float:
        """Kish's effective sample size of the selection weights, 1..M."""
        w = np.asarray(self.weights)
        return float(w.sum() ** 2 / (w ** 2).sum()) if len(w) else 0.0


class MosaicMechanism(Mechanism):
    name = "mosaic"

    def __init__(self, lm: LanguageModel, click_model, sampling, penalty, catalog_ids,
                 samples: int = 20, tau: float = 10.0, lam: float = 1.0,
                 payment: str = "first_price", correction: str = "exact", prompt=None):
        if payment not in ("first_price", "rochet"):
            raise ValueError(f"unknown mosaic payment {payment!r}; use first_price or rochet")
        if correction not in ("exact", "none"):
            raise ValueError(f"unknown mosaic correction {correction!r}; use exact or none")
        self.lm = lm
        self.prompt = prompt
        self.click_model = click_model
        # Which click model the pCTR comes from, for the run summary.
        self.pctr_model = getattr(click_model, "name", type(click_model).__name__)
        self.sampling = sampling
        self.penalty = penalty
        self.catalog_ids = frozenset(catalog_ids)
        self.samples = samples
        self.tau = tau
        self.lam = lam
        self.payment = payment
        proposal = SamplingParams.from_config(sampling)
        self.proposal = None if correction == "none" or samples_from_model(proposal) else proposal

    @property
    def generations_per_query(self) -> int:
        return self.samples

    def allocate(self, requests: Sequence[AuctionRequest], rng: np.random.Generator
                 ) -> list[Allocation]:
        if not requests:
            return []
        m = self.samples
        prompts = [ad_llm_messages(r.profile, r.query, r.candidates, r.bids, self.prompt)
                   for r in requests]
        params = [SamplingParams.from_config(self.sampling, n=m, seed=int(s))
                  for s in rng.integers(0, 2**63, len(requests))]
        outputs = self.lm.generate(prompts, params)
        flat_req, flat_alloc = [], []
        for r, outs in zip(requests, outputs):
            titles = r.candidate_titles()
            for c in outs:
                report = validate_response(c.text, titles, self.catalog_ids)
                flat_req.append(r)
                flat_alloc.append(Allocation(c.text, report, format_penalty(report, self.penalty)))
        pctr = response_pctr(self.click_model, flat_req, flat_alloc)
        texts = [[a.response for a in flat_alloc[q * m:(q + 1) * m]] for q in range(len(prompts))]
        ref, proposal = score_samples(self.lm, prompts, texts, self.proposal)
        log_ref = np.concatenate(ref)
        log_ratio = log_ref - np.concatenate(proposal) if proposal is not None else None
        result: list[Allocation] = []
        for q, r in enumerate(requests):
            sl = slice(q * m, (q + 1) * m)
            allocs, probs = flat_alloc[sl], pctr[sl]
            sample_pctr = tuple({i: float(p.get(i, 0.0)) for i in a.exposed_ids}
                                for a, p in zip(allocs, probs))
            rewards = np.array([net_reward(exposure_revenue(a.exposed_ids, r.bids, p), a.penalty,
                                           self.lam) for a, p in zip(allocs, sample_pctr)])
            ratio = log_ratio[sl] if log_ratio is not None else None
            weights = mosaic_weights(rewards, self.tau, ratio)
            j = int(rng.choice(m, p=weights))
            chosen = allocs[j]
            result.append(MosaicAllocation(
                chosen.response, chosen.report, chosen.penalty, chosen=j,
                rewards=tuple(map(float, rewards)), weights=tuple(map(float, weights)),
                log_ref=tuple(map(float, log_ref[sl])),
                sample_pctr=sample_pctr, tau=self.tau,
                log_ratio=tuple(map(float, ratio)) if ratio is not None else ()))
        return result

    def rochet_price(self, request: AuctionRequest, allocation: MosaicAllocation,
                     ad_id: str) -> float:
        """Price per click of `ad_id` under the Myerson payment of its allocation curve."""
        ctr_i = np.array([p.get(ad_id, 0.0) for p in allocation.sample_pctr])
        bid = float(request.bids[ad_id])
        rewards = np.array(allocation.rewards)

        def x(z):
            return mosaic_allocation_curve(rewards, ctr_i, bid, allocation.tau, np.atleast_1d(z),
                                           np.array(allocation.log_ratio) if allocation.log_ratio
                                           else None)

        x_b = float(x(bid)[0])
        return myerson_payment(x, bid) / x_b if x_b > 0 else 0.0

    def payments(self, request: AuctionRequest, allocation: Allocation,
                 clicked: Sequence[str]) -> dict[str, float]:
        exposed = set(allocation.exposed_ids)
        clicked = [c for c in clicked if c in exposed]
        if self.payment == "first_price" or not isinstance(allocation, MosaicAllocation):
            return first_price_per_click(request.bids, clicked)
        payments: dict[str, float] = {}
        for ad_id in clicked:
            payments[ad_id] = (payments.get(ad_id, 0.0)
                               + self.rochet_price(request, allocation, ad_id))
        return payments


def _mosaic(config, *, settings: MosaicConfig, ad_lm=None, catalog=None, click_model=None,
            encoder=None, user_lm=None, **_):
    ad_lm, catalog = policy_lm_and_catalog(config, ad_lm, catalog)
    click_model = load_click_model(config, click_model=click_model, encoder=encoder,
                                   catalog=catalog, user_lm=user_lm)
    m = settings
    return MosaicMechanism(ad_lm, click_model, config.ad_sampling, config.penalty, catalog.ids,
                           m.samples, m.tau, m.penalty_weight, m.payment, m.correction,
                           config.ad_prompt)


register_mechanism("mosaic", _mosaic, "MOSAIC: post-generation selection among M sampled answers",
                   config_class=MosaicConfig)
