"""Baseline mechanisms (pregen_gsp, mosaic, llm_auction), payment rules and allocation analysis."""

from __future__ import annotations

import numpy as np
import pytest

from llmauction_sim.analysis import (
    answer_rewards,
    curve,
    estimate_itctr,
    itctr_under,
    kl_optimum,
    mean_ci,
    monotonicity_stats,
    mosaic_allocation_curve,
    mosaic_weights,
    softmax,
    spearman,
    sweep,
    violation_rate,
)
from llmauction_sim.config import PenaltyConfig, RunConfig, SamplingConfig
from llmauction_sim.domain.mentions import render_mention
from llmauction_sim.domain.payments import (
    first_price_per_click,
    gsp_prices,
    myerson_payment,
    per_click,
    rank_by_score,
    vcg_slot_prices,
)
from llmauction_sim.lm.base import Completion
from llmauction_sim.mechanisms import AuctionRequest, make_mechanism, mechanism_names
from llmauction_sim.mechanisms.mosaic import MosaicAllocation, MosaicMechanism
from llmauction_sim.mechanisms.pregen_gsp import PregenGSPMechanism, slot_auction

# ------------------------------------------------------------------------------------------------
# Payment rules
# ------------------------------------------------------------------------------------------------

BIDS = {"a": 10.0, "b": 8.0, "c": 3.0}
QUALITY = {"a": 0.5, "b": 0.5, "c": 1.0}  # scores: a 5, b 4, c 3


def test_rank_by_score_breaks_ties_by_bid() -> None:
    assert rank_by_score(BIDS, QUALITY) == ["a", "b", "c"]
    assert rank_by_score({"x": 2.0, "y": 4.0}, {"x": 1.0, "y": 0.5}) == ["y", "x"]


def test_gsp_prices_hand_computed() -> None:
    # a pays score_b / q_a = 4 / 0.5; b pays score_c / q_b = 3 / 0.5; c has no slot.
    assert gsp_prices(BIDS, QUALITY, slots=2) == {"a": 8.0, "b": 6.0}
    # The last ad with no one below pays 0.
    assert gsp_prices(BIDS, QUALITY, slots=3) == {"a": 8.0, "b": 6.0, "c": 0.0}


def test_vcg_slot_prices_hand_computed() -> None:
    # Weights 1, 0.5. a: (1-0.5)*4 + (0.5-0)*3 = 3.5 over 1*0.5 clicks = 7 per click.
    # b: 0.5*3 = 1.5 over 0.5*0.5 clicks = 6 per click.
    prices = vcg_slot_prices(BIDS, QUALITY, [1.0, 0.5], slots=2)
    assert prices == pytest.approx({"a": 7.0, "b": 6.0})
    gsp = gsp_prices(BIDS, QUALITY, slots=2)
    assert all(prices[i] <= gsp[i] + 1e-12 for i in prices)  # VCG never exceeds GSP
    # One slot: VCG equals GSP (second price).
    assert vcg_slot_prices(BIDS, QUALITY, [1.0], 1) == pytest.approx(gsp_prices(BIDS, QUALITY, 1))


def test_per_click_and_first_price() -> None:
    assert per_click({"a": 8.0}, ["a", "a"]) == {"a": 16.0}
    with pytest.raises(KeyError):
        per_click({"a": 8.0}, ["c"])
    assert first_price_per_click(BIDS, ["a", "c"]) == {"a": 10.0, "c": 3.0}


@pytest.mark.parametrize("bid", [0.0, 1.0, 37.0, 60.0, 100.0])
def test_myerson_payment_linear_curve(bid: float) -> None:
    assert myerson_payment(lambda z: z / 100.0, bid) == pytest.approx(bid ** 2 / 200.0)


def test_myerson_payment_step_curve_is_the_threshold() -> None:
    # x(b) = 1 for b >= 30: a posted price of 30 (up to the grid's resolution).
    pay = myerson_payment(lambda z: float(z >= 30.0), 80.0, points=4001)
    assert pay == pytest.approx(30.0, abs=0.05)
    # A scalar-only callable is evaluated point by point.
    assert myerson_payment(lambda z: min(1.0, z / 100.0), 50.0) == pytest.approx(12.5)


# ------------------------------------------------------------------------------------------------
# KL-regularised optimum and MOSAIC on a fixed candidate set
# ------------------------------------------------------------------------------------------------

# Four answers over two ads: none, ad 0 only, ad 1 only, both.
EXPOSED = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
CTR = np.array([[0, 0], [0.3, 0], [0, 0.5], [0.2, 0.3]])
PENALTY = np.array([0.0, 5.0, 5.0, 20.0])
LOG_PI0 = np.log(np.array([0.4, 0.3, 0.2, 0.1]))


def test_kl_optimum_is_monotone_in_the_bid() -> None:
    itctr = []
    for b0 in np.linspace(1, 100, 25):
        r = answer_rewards(np.array([b0, 40.0]), CTR, EXPOSED, PENALTY)
        itctr.append(itctr_under(kl_optimum(LOG_PI0, r, beta=5.0), CTR, EXPOSED)[0])
    assert np.all(np.diff(itctr) >= -1e-12)
    assert itctr[-1] > itctr[0] + 0.1


def test_kl_optimum_limits() -> None:
    r = answer_rewards(np.array([50.0, 40.0]), CTR, EXPOSED, PENALTY)
    assert kl_optimum(LOG_PI0, r, beta=1e9) == pytest.approx(np.exp(LOG_PI0), abs=1e-6)
    sharp = kl_optimum(LOG_PI0, r, beta=1e-6)
    assert sharp.argmax() == r.argmax() and sharp.max() == pytest.approx(1.0)
    assert kl_optimum(LOG_PI0, r, beta=0.0) == pytest.approx(np.eye(4)[r.argmax()])


def test_mosaic_weights_importance_correction() -> None:
    r = np.array([1.0, 2.0, 3.0])
    assert mosaic_weights(r, 1.0) == pytest.approx(softmax(r))
    log_ref, log_q = np.log([0.2, 0.3, 0.5]), np.log([0.5, 0.3, 0.2])
    expected = np.exp(r + log_ref - log_q)
    assert mosaic_weights(r, 1.0, log_ref, log_q) == pytest.approx(expected / expected.sum())


def test_mosaic_selection_converges_to_the_kl_optimum() -> None:
    rng = np.random.default_rng(0)
    tau = 5.0
    r = answer_rewards(np.array([60.0, 40.0]), CTR, EXPOSED, PENALTY)
    target = kl_optimum(LOG_PI0, r, tau)
    pi0 = np.exp(LOG_PI0)
    trials = 20000
    distances = []
    for m in (1, 4, 64):
        draws = rng.choice(4, size=(trials, m), p=pi0)       # M samples from pi_ref
        logits = r[draws] / tau
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        pick = (w.cumsum(axis=1) > rng.random((trials, 1))).argmax(axis=1)
        freq = np.bincount(draws[np.arange(trials), pick], minlength=4) / trials
        distances.append(0.5 * np.abs(freq - target).sum())
    assert distances[0] > 0.3                         # M = 1 is pi_ref itself
    assert distances[2] < 0.03 < distances[0]
    assert distances[0] > distances[1] > distances[2]


def test_mosaic_allocation_curve_monotone_and_rochet_below_bid() -> None:
    rewards = np.array([10.0, 4.0, 0.0, -2.0])
    ctr_i = np.array([0.0, 0.4, 0.0, 0.6])
    grid = np.linspace(0, 100, 101)
    x = mosaic_allocation_curve(rewards, ctr_i, 30.0, 5.0, grid)
    assert np.all(np.diff(x) >= -1e-12)
    x_b = float(mosaic_allocation_curve(rewards, ctr_i, 30.0, 5.0, np.array([30.0]))[0])
    pay = myerson_payment(lambda z: mosaic_allocation_curve(rewards, ctr_i, 30.0, 5.0, z), 30.0)
    assert 0.0 <= pay / x_b <= 30.0


def test_statistics() -> None:
    assert spearman([1, 2, 3, 4], [0, 1, 1, 5]) == pytest.approx(0.9486832980505138)
    assert np.isnan(spearman([1, 2, 3], [2, 2, 2]))
    assert violation_rate([0, 1, 0.5, 2]) == pytest.approx(1 / 3)
    est = mean_ci([0.0, 1.0, 0.0, 1.0])
    assert est.mean == 0.5 and est.low < 0.5 < est.high and est.n == 4


# ------------------------------------------------------------------------------------------------
# Mechanisms on test doubles
# ------------------------------------------------------------------------------------------------

class ScriptedLM:
    """Answers by a function of (prompt, sample index); records every call."""

    name = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[tuple[str, int, list[int]]] = []

    def generate(self, prompts, params):
        params = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append(("generate", len(prompts), [p.n for p in params]))
        return [[Completion(self.answer(prompt, j), 5, True) for j in range(p.n)]
                for prompt, p in zip(prompts, params)]

    def score(self, prompts, continuations, params=None):
        self.calls.append(("score", len(prompts), []))
        scale = 1.0 if params is None else 0.5  # the proposal: a sharper distribution
        return -scale * np.array([float(len(c)) for c in continuations])


class FixedClickModel:
    """pCTR per ad ID, whatever the answer."""

    name = "fixed"

    def __init__(self, pctr):
        self.pctr = pctr
        self.calls = 0

    def probabilities(self, requests):
        self.calls += 1
        return [{ad.id: self.pctr[ad.id] for ad in r.exposed} for r in requests]


@pytest.fixture
def auction(packaged_catalog, profile_factory):
    ads = tuple(packaged_catalog)[:3]
    bids = {ads[0].id: 10.0, ads[1].id: 8.0, ads[2].id: 3.0}
    request = AuctionRequest("Q-1", profile_factory("running"), "Which shoes for a marathon?",
                             ads, bids)
    pctr = {ads[0].id: 0.5, ads[1].id: 0.5, ads[2].id: 1.0}
    return request, ads, pctr


def woven(*ads) -> str:
    return "Train slowly. " + " ".join(
        f"Many runners like {render_mention(ad.title, ad.id)} for long runs." for ad in ads)


def test_pregen_gsp_ranks_prompts_and_charges(auction, packaged_catalog) -> None:
    request, ads, pctr = auction

    def answer(prompt, j):  # writes in exactly the listed products
        listed = [ad for ad in ads if ad.id in prompt[-1]["content"]]
        return woven(*listed)

    lm = ScriptedLM(answer)
    mech = PregenGSPMechanism(lm, FixedClickModel(pctr), SamplingConfig(), PenaltyConfig(),
                              packaged_catalog.ids, slots=2, slot_weights=[1.0, 0.5])
    (alloc,) = mech.allocate([request], np.random.default_rng(0))
    assert alloc.winners == (ads[0].id, ads[1].id)
    assert alloc.exposed_ids == (ads[0].id, ads[1].id)
    assert not alloc.report.has_format_error
    assert alloc.prices == {ads[0].id: 8.0, ads[1].id: 6.0}
    assert mech.payments(request, alloc, [ads[1].id]) == {ads[1].id: 6.0}
    assert [c[0] for c in lm.calls] == ["generate"]
    # A loser written in anyway is a format error and never charged.
    lm2 = ScriptedLM(lambda prompt, j: woven(*ads))
    mech2 = PregenGSPMechanism(lm2, FixedClickModel(pctr), SamplingConfig(), PenaltyConfig(),
                               packaged_catalog.ids, slots=2)
    (alloc2,) = mech2.allocate([request], np.random.default_rng(0))
    assert ads[2].id not in alloc2.exposed_ids
    assert alloc2.report.error_counts()["non_candidate"] == 1
    assert mech2.payments(request, alloc2, [ads[2].id]) == {}


def test_slot_auction_first_price_and_vcg(auction) -> None:
    request, ads, pctr = auction
    fp = slot_auction(request.bids, pctr, 2, [1.0, 0.5], "first_price")
    assert fp.prices == {ads[0].id: 10.0, ads[1].id: 8.0}
    assert fp.expected_clicks == pytest.approx({ads[0].id: 0.5, ads[1].id: 0.25})
    vcg = slot_auction(request.bids, pctr, 2, [1.0, 0.5], "vcg")
    assert vcg.prices == pytest.approx({ads[0].id: 7.0, ads[1].id: 6.0})


def test_mosaic_one_batched_call_and_selection(auction, packaged_catalog) -> None:
    request, ads, pctr = auction
    texts = ["Train slowly and rest.", woven(ads[0]), woven(ads[1]), woven(*ads)]
    lm = ScriptedLM(lambda prompt, j: texts[j % 4])
    clicks = FixedClickModel(pctr)
    mech = MosaicMechanism(lm, clicks, SamplingConfig(), PenaltyConfig(), packaged_catalog.ids,
                           samples=4, tau=0.01)
    allocs = mech.allocate([request, request], np.random.default_rng(1))
    # One generate call; the samples scored under the model and under the proposal (T = 0.7).
    assert [c[:2] for c in lm.calls] == [("generate", 2), ("score", 8), ("score", 8)]
    assert lm.calls[0][2] == [4, 4] and clicks.calls == 1
    for a in allocs:
        assert isinstance(a, MosaicAllocation) and len(a.rewards) == 4
        # R: none 0; ad0 10*0.5-5 = 0; ad1 8*0.5-5 = -1; all three 5+4+3-15-20 = -23.
        assert a.rewards == pytest.approx((0.0, 0.0, -1.0, -23.0))
        assert a.chosen in (0, 1) and sum(a.weights) == pytest.approx(1.0)
    assert mech.generations_per_query == 4
    # First price by default; the Rochet rule charges at most the bid.
    chosen = next(a for a in allocs if a.chosen == 1) if any(a.chosen == 1 for a in allocs) \
        else None
    if chosen is not None:
        assert mech.payments(request, chosen, [ads[0].id]) == {ads[0].id: 10.0}
        mech.payment = "rochet"
        price = mech.payments(request, chosen, [ads[0].id])[ads[0].id]
        assert 0.0 <= price <= 10.0


def test_mosaic_large_tau_is_uniform_over_samples(auction, packaged_catalog) -> None:
    request, ads, pctr = auction
    texts = ["Train slowly and rest.", woven(ads[0])]
    mech = MosaicMechanism(ScriptedLM(lambda p, j: texts[j % 2]), FixedClickModel(pctr),
                           SamplingConfig(), PenaltyConfig(), packaged_catalog.ids,
                           samples=2, tau=1e9, correction="none")
    (a,) = mech.allocate([request], np.random.default_rng(0))
    assert a.weights == pytest.approx((0.5, 0.5))


def test_mosaic_importance_weights_correct_for_the_proposal(auction, packaged_catalog) -> None:
    request, ads, pctr = auction
    texts = ["Train slowly and rest.", woven(ads[0])]
    lm = ScriptedLM(lambda p, j: texts[j % 2])
    mech = MosaicMechanism(lm, FixedClickModel(pctr), SamplingConfig(), PenaltyConfig(),
                           packaged_catalog.ids, samples=2, tau=2.0)
    (a,) = mech.allocate([request], np.random.default_rng(0))
    # w ~ exp(R/tau) pi_ref / q with log pi_ref = -len, log q = -len/2 (ScriptedLM).
    log_ratio = -0.5 * np.array([len(t) for t in texts], float)
    expected = np.exp(np.array(a.rewards) / 2.0 + log_ratio)
    assert a.weights == pytest.approx(tuple(expected / expected.sum()))
    assert a.log_ratio == pytest.approx(tuple(log_ratio))
    assert 1.0 <= a.effective_samples < 2.0
    # Sampling from the model itself (T = 1, no truncation): no proposal to correct for.
    own = SamplingConfig(temperature=1.0, top_p=1.0, top_k=0)
    lm.calls.clear()
    mech = MosaicMechanism(lm, FixedClickModel(pctr), own, PenaltyConfig(),
                           packaged_catalog.ids, samples=2, tau=2.0)
    (b,) = mech.allocate([request], np.random.default_rng(0))
    assert [c[0] for c in lm.calls] == ["generate", "score"] and b.log_ratio == ()
    assert b.weights == pytest.approx(tuple(np.exp(np.array(b.rewards) / 2.0)
                                            / np.exp(np.array(b.rewards) / 2.0).sum()))


def test_registry_and_llm_auction_equals_pretrained(auction, packaged_catalog) -> None:
    assert {"pretrained", "pregen_gsp", "mosaic", "llm_auction"} <= set(mechanism_names())
    request, ads, pctr = auction
    config = RunConfig()
    lm = ScriptedLM(lambda prompt, j: woven(ads[0]) + prompt[-1]["content"][-20:])
    pre = make_mechanism("pretrained", config, ad_lm=lm, catalog=packaged_catalog)
    trained = make_mechanism("llm_auction", config, ad_lm=lm, catalog=packaged_catalog)
    a = pre.allocate([request], np.random.default_rng(3))
    b = trained.allocate([request], np.random.default_rng(3))
    assert a == b and trained.name == "llm_auction"
    gsp = make_mechanism("pregen_gsp", config, ad_lm=lm, catalog=packaged_catalog,
                         click_model=FixedClickModel(pctr))
    assert gsp.payment == "gsp" and gsp.slots == config.mechanisms.pregen_gsp.slots
    mosaic = make_mechanism("mosaic", config, ad_lm=lm, catalog=packaged_catalog,
                            click_model=FixedClickModel(pctr))
    assert mosaic.samples == 20


def test_mosaic_names_its_pctr_model_and_refuses_a_judge_without_one(
        auction, packaged_catalog, text_encoder) -> None:
    from llmauction_sim.clicks.embedding import EmbeddingJudge
    from llmauction_sim.config import ConfigError
    from llmauction_sim.mechanisms.pctr import judge_as_pctr, pctr_model_name

    request, ads, pctr = auction
    lm = ScriptedLM(lambda prompt, j: woven(ads[0]))
    # The default: the click judge's own probabilities (the embedding judge).
    default = make_mechanism("mosaic", RunConfig(), ad_lm=lm, catalog=packaged_catalog,
                             encoder=text_encoder)
    assert default.pctr_model == "embedding" and isinstance(default.click_model, EmbeddingJudge)
    # The llm judge only draws clicks: no silent MiniLM stand-in, a ConfigError naming the fix.
    llm_judge = RunConfig().with_overrides(["clicks.judge=llm"])
    for name in ("mosaic", "pregen_gsp", "llm_auction_tilted"):
        with pytest.raises(ConfigError, match="pctr_model = 'embedding'") as err:
            make_mechanism(name, llm_judge, ad_lm=lm, catalog=packaged_catalog,
                           encoder=text_encoder)
        assert "'llm'" in str(err.value) and "no click probabilities" in str(err.value)
    # Asked for by name, the embedding click model serves, and the mechanism says so.
    named = llm_judge.with_overrides(["mechanisms.pctr_model=embedding"])
    mech = make_mechanism("mosaic", named, ad_lm=lm, catalog=packaged_catalog,
                          encoder=text_encoder)
    assert mech.pctr_model == "embedding" and pctr_model_name(named) == "embedding"
    # The log-probability judge gives pCTR from the User-LLM it is handed.
    logprob = RunConfig().with_overrides(["clicks.judge=logprob"])
    mech = make_mechanism("mosaic", logprob, ad_lm=lm, catalog=packaged_catalog, user_lm=lm)
    assert mech.pctr_model == "logprob" and mech.click_model.lm is lm
    # A registered judge other than the configured pCTR model is refused, not used.
    with pytest.raises(ConfigError, match="pctr_model = 'logprob'"):
        make_mechanism("mosaic", named, ad_lm=lm, catalog=packaged_catalog,
                       click_model=mech.click_model)
    assert judge_as_pctr(named, mech.click_model) is None
    assert judge_as_pctr(logprob, mech.click_model) is mech.click_model
    # A caller's own click model is used as given and named by its own name.
    own = make_mechanism("mosaic", RunConfig(), ad_lm=lm, catalog=packaged_catalog,
                         click_model=FixedClickModel(pctr))
    assert own.pctr_model == "fixed"
    assert judge_as_pctr(RunConfig(), FixedClickModel(pctr)) is not None


def test_mechanism_config_fields() -> None:
    c = RunConfig().with_overrides(["mechanisms.pregen_gsp.slots=3",
                                    "mechanisms.pregen_gsp.slot_weights=1,0.6,0.3",
                                    "mechanisms.pregen_gsp.payment=vcg",
                                    "mechanisms.mosaic.samples=2"])
    gsp = c.mechanisms.pregen_gsp
    assert gsp.slot_weights == [1.0, 0.6, 0.3] and gsp.payment == "vcg" and gsp.slots == 3
    assert c.mechanisms.mosaic.samples == 2
    from llmauction_sim.config import ConfigError

    with pytest.raises(ConfigError):
        RunConfig().with_overrides(["mechanisms.pregen_gsp.payment=second"])


# ------------------------------------------------------------------------------------------------
# Analysis experiments on a mechanism double
# ------------------------------------------------------------------------------------------------

class BidThreshold:
    """Inserts the first candidate iff its bid is at least 50 (a monotone step allocation)."""

    name = "threshold"

    def allocate(self, requests, rng):
        from llmauction_sim.domain.mentions import validate_response
        from llmauction_sim.mechanisms import Allocation

        out = []
        for r in requests:
            ad = r.candidates[0]
            text = woven(ad) if r.bids[ad.id] >= 50 else "Train slowly."
            report = validate_response(text, r.candidate_titles())
            out.append(Allocation(text, report, 0.0))
        return out


def test_sweep_itctr_and_monotonicity(auction) -> None:
    request, ads, pctr = auction
    clicks = FixedClickModel(pctr)
    frame = sweep(BidThreshold(), clicks, [request, request], [ads[0].id, ads[0].id],
                  [1, 40, 60, 100], repeats=3, rng=np.random.default_rng(0))
    assert len(frame) == 2 * 4 * 3
    c = curve(frame)
    assert list(c.loc[c["sample"] == 0, "itctr"]) == pytest.approx([0, 0, 0.5, 0.5])
    stats = monotonicity_stats(c, "itctr")
    assert stats["violation_rate"] == 0.0 and stats["mean_spearman"] > 0.8
    est = estimate_itctr(BidThreshold(), clicks, request, ads[0].id, 5, np.random.default_rng(0))
    assert est.mean == pytest.approx(0.0) and est.n == 5


# ------------------------------------------------------------------------------------------------
# End to end on the embedded model
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_every_mechanism_on_the_embedded_model(tmp_path) -> None:
    import json

    from llmauction_sim.evaluation import evaluate
    from llmauction_sim.lm.registry import load_language_model

    config = RunConfig().with_overrides([
        "ad_sampling.max_new_tokens=12", "mechanisms.mosaic.samples=2",
        "retrieval.num_candidates=3", "data.profiles=12", "data.query_writer=template"])
    lm = load_language_model(config.ad_llm, seed=config.seed)
    summaries = {}
    for name in ("pretrained", "pregen_gsp", "mosaic", "llm_auction", "llm_auction_tilted",
                 "llm_auction_ranked"):
        out = tmp_path / name
        # The first run builds template-written data (asked for by name) in its folder; the others
        # reuse it.
        data = tmp_path / "pretrained" / "data" if name != "pretrained" else None
        summaries[name] = evaluate(config, name, 2, out, data=data, ad_lm=lm)
        stored = json.loads((out / "summary.json").read_text())
        assert stored["queries"] == 2 and (out / "queries.parquet").is_file()
        for key in ("revenue_per_query", "reward_per_query", "ctr", "ads_per_response",
                    "format_error_rate", "generations_per_query", "seconds_per_query"):
            assert key in stored
    assert summaries["mosaic"]["generations_per_query"] == 2
    assert summaries["pregen_gsp"]["generations_per_query"] == 1
    # Given the same model (here the base one), llm_auction is pretrained: same answers.
    for key in ("revenue_per_query", "reward_per_query", "ads_per_response"):
        assert summaries["llm_auction"][key] == summaries["pretrained"][key]
