"""llm_auction_tilted: the tilt's arithmetic, monotone and continuous in every bid, and the decoder
on a tiny model (mentions written exactly, at most max_ads, reproducible)."""

import numpy as np
import pytest
from tiny_models import embedded_tokenizer, tiny_llama

from llmauction_sim.config import PenaltyConfig, RunConfig
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.domain.users import generate_profiles
from llmauction_sim.lm.hf import TransformersLM
from llmauction_sim.mechanisms import AuctionRequest
from llmauction_sim.mechanisms.tilted import (
    TiltedMechanism,
    ad_utilities,
    log_mention_value,
    open_probability,
    tilted_choice,
)

CATALOG = load_catalog()
PENALTY = PenaltyConfig()


def test_tilted_choice_limits() -> None:
    log_q = np.log([0.7, 0.2, 0.1])
    u = np.array([0.0, 5.0, 1.0])
    np.testing.assert_allclose(tilted_choice(log_q, u, 1e9), [0.7, 0.2, 0.1], atol=1e-6)
    assert tilted_choice(log_q, u, 1e-3).argmax() == 1
    p = tilted_choice(log_q + 17.0, u, 2.0)  # a constant offset of log q changes nothing
    np.testing.assert_allclose(p, tilted_choice(log_q, u, 2.0))
    np.testing.assert_allclose(p, np.array([0.7, 0.2 * np.exp(2.5), 0.1 * np.exp(0.5)])
                               / (0.7 + 0.2 * np.exp(2.5) + 0.1 * np.exp(0.5)))


def test_utilities_charge_the_kth_ads_format_cost() -> None:
    u1 = ad_utilities([10, 50], [0.2, 0.1], PENALTY, 1.0, 1)
    u2 = ad_utilities([10, 50], [0.2, 0.1], PENALTY, 1.0, 2)
    np.testing.assert_allclose(u1, [2 - PENALTY.per_ad, 5 - PENALTY.per_ad])
    np.testing.assert_allclose(u2 - u1, -PENALTY.flooding)


@pytest.mark.parametrize("temperature", [1.0, 5.0, 20.0])
def test_allocation_is_monotone_and_lipschitz_in_each_bid(temperature) -> None:
    """P(choose i) and P(open a mention) never fall as b_i rises, and move by at most
    pCTR_i / (4 T) per bid unit (the bound of the logistic tilt): continuous."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(2, 7))
        log_q, pctr = rng.normal(0, 2, k), rng.uniform(0.02, 0.5, k)
        bids, p_open = rng.uniform(1, 100, k), float(rng.uniform(0.01, 0.99))
        i = int(rng.integers(k))
        grid = np.linspace(0.0, 150.0, 601)
        choice, opened = [], []
        for b in grid:
            bids[i] = b
            u = ad_utilities(bids, pctr, PENALTY, 1.0, 1)
            choice.append(tilted_choice(log_q, u, temperature)[i])
            opened.append(open_probability(p_open, log_mention_value(log_q, u, temperature)))
        step = grid[1] - grid[0]
        for curve in (np.array(choice), np.array(opened)):
            assert np.all(np.diff(curve) >= -1e-12)
            assert np.max(np.abs(np.diff(curve))) <= pctr[i] * step / (4 * temperature) + 1e-9


def test_open_probability_is_the_one_step_tilt() -> None:
    assert open_probability(0.3, 0.0) == pytest.approx(0.3)
    assert open_probability(0.3, np.log(3.0)) == pytest.approx(0.9 / (0.9 + 0.7))
    assert open_probability(0.0, 50.0) == 0.0 and open_probability(1.0, -50.0) == 1.0


# --- the decoder on a tiny random model ----------------------------------------------------------

class ConstantClickModel:
    name = "constant"

    def probabilities(self, requests):
        return [{ad.id: 0.2 for ad in r.exposed} for r in requests]


def requests(n: int = 4, k: int = 3) -> list[AuctionRequest]:
    out = []
    for j, profile in enumerate(generate_profiles(n, 3, CATALOG)):
        cands = tuple(CATALOG[k * j:k * j + k])
        bids = {ad.id: float(10 + 30 * i) for i, ad in enumerate(cands)}
        out.append(AuctionRequest(f"q{j}", profile, "Which tent should I buy?", cands, bids))
    return out


@pytest.fixture(scope="module")
def tiny_lm():
    tokenizer = embedded_tokenizer()
    return TransformersLM(tiny_llama(tokenizer), tokenizer, name="tiny")


def mechanism(lm, **kwargs) -> TiltedMechanism:
    config = RunConfig().with_overrides(["ad_sampling.max_new_tokens=12"])
    return TiltedMechanism(lm, ConstantClickModel(), config.ad_sampling, config.penalty,
                           CATALOG.ids, config.ad_prompt, **kwargs)


def test_decoder_writes_exact_mentions_and_respects_max_ads(tiny_lm) -> None:
    # A tiny temperature makes exp(u/T) huge for the top bid: every row opens mentions as soon
    # as it may (the random model gives '@' a small but positive probability).
    mech = mechanism(tiny_lm, temperature=0.05, max_ads=2)
    reqs = requests()
    allocations = mech.allocate(reqs, np.random.default_rng(0))
    for r, a in zip(reqs, allocations):
        assert not a.report.has_format_error, a.response
        assert 1 <= a.report.num_ads <= 2
        assert set(a.exposed_ids) <= {ad.id for ad in r.candidates}
        assert len(a.choices) == a.report.num_ads
        top = max(r.bids, key=r.bids.get)
        assert a.exposed_ids[0] == top  # u/T dwarfs the random model's preferences
        assert a.choices[0][top] > 0.99


def test_decoder_without_tilt_toward_mentions_writes_none(tiny_lm) -> None:
    # Low bids and a cold temperature: every mention's utility is negative, so Z ~ 0 bans '@'.
    mech = mechanism(tiny_lm, temperature=0.05)
    reqs = [AuctionRequest(r.query_id, r.profile, r.query, r.candidates,
                           {i: 1.0 for i in r.bids}) for r in requests()]
    for a in mech.allocate(reqs, np.random.default_rng(0)):
        assert a.report.num_ads == 0 and not a.report.has_format_error


def test_decoder_is_reproducible(tiny_lm) -> None:
    mech = mechanism(tiny_lm, temperature=2.0)
    a = mech.allocate(requests(), np.random.default_rng(5))
    b = mech.allocate(requests(), np.random.default_rng(5))
    assert [x.response for x in a] == [x.response for x in b]


@pytest.mark.slow
def test_tilt_on_the_embedded_warm_start_is_monotone_and_continuous() -> None:
    """With pi_0's real choice probabilities (the shipped warm start, at its own mention point)
    the tilted choice of each ad and the decision to open a mention are non-decreasing in its bid
    and move by at most pCTR / (4T) per bid unit over a fine grid."""
    from llmauction_sim.lm.prompts import ad_llm_messages
    from llmauction_sim.lm.registry import load_language_model
    from llmauction_sim.mechanisms.base import policy_config
    from llmauction_sim.mechanisms.tilted import mention_logprobs
    from llmauction_sim.probe import mention_prefixes

    config = RunConfig()
    lm = load_language_model(policy_config(config))
    reqs = requests(3, 4)
    prompts = [ad_llm_messages(r.profile, r.query, r.candidates, r.bids, config.ad_prompt)
               for r in reqs]
    prefixes, _ = mention_prefixes(lm, prompts)
    log_q = mention_logprobs(lm, prompts, prefixes, reqs, [[a.id for a in r.candidates]
                                                          for r in reqs])
    temperature, grid = config.mechanisms.llm_auction_tilted.temperature, np.linspace(0, 100, 401)
    for r, lq in zip(reqs, log_q):
        assert np.all(np.isfinite(lq)) and len(lq) == 4
        pctr = np.array([0.1, 0.25, 0.4, 0.05])
        for i in range(4):
            bids = np.array([r.bids[a.id] for a in r.candidates], float)
            choice, opened = [], []
            for b in grid:
                bids[i] = b
                u = ad_utilities(bids, pctr, config.penalty, 1.0, 1)
                choice.append(tilted_choice(lq, u, temperature)[i])
                opened.append(open_probability(0.3, log_mention_value(lq, u, temperature)))
            for curve in (np.array(choice), np.array(opened)):
                assert np.all(np.diff(curve) >= -1e-12)
                assert np.abs(np.diff(curve)).max() <= pctr[i] * 0.25 / (4 * temperature) + 1e-9
            assert choice[-1] > choice[0]  # the bid moves the allocation
