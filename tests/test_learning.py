"""Learning layer: pCTR reward model, reward R(y), IRPO pairs and a DPO phase on a tiny llama."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import tiny_models
from tiny_models import embedded_tokenizer

from llmauction_sim.config import PenaltyConfig
from llmauction_sim.domain.catalog import Ad
from llmauction_sim.domain.users import UserProfile
from llmauction_sim.learning.pairs import (
    ResponseGroup,
    build_preference_pairs,
    pair_stats,
    select_pairs,
)
from llmauction_sim.learning.pctr import PctrConfig, PctrModel, calibration_table, roc_auc
from llmauction_sim.learning.reward import oracle_rewards, pctr_rewards, rewards_array
from llmauction_sim.mechanisms.base import AuctionRequest

KEYWORD = "perfect fit"


class KeywordEncoder:
    """A fast stand-in for the sentence encoder: dimension 0 says whether the text contains
    KEYWORD, the others are a fixed pseudo-random direction per text; rows are L2-normalised."""

    name = "keyword-test-encoder"
    dim = 16

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            out[i, 1:] = np.random.default_rng(seed).normal(0, 0.3, self.dim - 1)
            out[i, 0] = 1.0 if KEYWORD in t else -1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def synthetic_clicks(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows with a known CTR: logit = -1.5 + 2.5 * [keyword in response] + ad effect."""
    rng = np.random.default_rng(seed)
    ad_effect = np.linspace(-1.0, 1.0, 10)
    ads = rng.integers(0, 10, n)
    kw = rng.random(n) < 0.5
    p = 1 / (1 + np.exp(-(-1.5 + 2.5 * kw + ad_effect[ads])))
    frame = pd.DataFrame({
        "user_id": [f"U-{u:05d}" for u in rng.integers(0, 40, n)],
        "ad_id": [f"Ad-{1000 + a}" for a in ads],
        "query": [f"question {q}" for q in rng.integers(0, 300, n)],
        "response": [f"{KEYWORD if k else 'an option'} answer {r}"
                     for k, r in zip(kw, rng.integers(0, 500, n))],
        "clicked": (rng.random(n) < p).astype(int),
    })
    return frame, p


@pytest.fixture(scope="module")
def click_log():
    train, _ = synthetic_clicks(6000, seed=1)
    test, p_test = synthetic_clicks(2000, seed=2)
    frame = pd.concat([train.assign(split="train"), test.assign(split="test")],
                      ignore_index=True)
    return frame, p_test


@pytest.fixture(scope="module")
def trained(click_log):
    frame, _ = click_log
    model = PctrModel(PctrConfig(epochs=8, min_steps=0), encoder=KeywordEncoder())
    report = model.fit(frame)
    return model, report


def test_roc_auc_matches_definition():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_pctr_recovers_known_ctr(click_log, trained):
    frame, p_test = click_log
    model, report = trained
    labels = frame.loc[frame.split == "test", "clicked"].to_numpy()
    bayes_auc = roc_auc(labels, p_test)
    # Tolerance: 0.03 AUC below the Bayes AUC of the true probabilities on the same 2000 rows.
    assert report.heldout_rows == 2000 and report.train_rows == 6000
    assert report.auc >= bayes_auc - 0.03, (report.auc, bayes_auc)
    assert report.log_loss < report.base_log_loss
    # Predictions track the true probabilities and the calibration table is close to diagonal.
    pred = model.predict(frame[frame.split == "test"])
    assert np.corrcoef(pred, p_test)[0, 1] > 0.9
    assert len(report.calibration) == 10
    for row in report.calibration:
        assert abs(row["mean_predicted"] - row["observed_rate"]) < 0.12, row
    assert report.epoch_losses[-1] < report.epoch_losses[0]


def test_pctr_caches_text_features(trained):
    model, _ = trained
    before = model.encoder.calls
    model.predict([{"user_id": "U-00001", "ad_id": "Ad-1001", "query": "question 1",
                    "response": f"{KEYWORD} answer 1"}])
    model.predict([{"user_id": "U-00001", "ad_id": "Ad-1001", "query": "question 1",
                    "response": f"{KEYWORD} answer 1"}])
    assert model.encoder.calls <= before + 1


def test_pctr_unknown_ids_and_save_load(trained, tmp_path):
    model, _ = trained
    rows = [{"user_id": "U-never-seen", "ad_id": "Ad-9999", "query": "new question",
             "response": f"{KEYWORD} fresh"},
            {"user_id": "U-00003", "ad_id": "Ad-1009", "query": "question 3",
             "response": "an option answer 7"}]
    p = model.predict(rows)
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    folder = model.save(tmp_path / "pctr")
    model.save(folder)  # overwrite in place
    assert sorted(x.name for x in tmp_path.iterdir()) == ["pctr"]
    again = PctrModel.load(folder, encoder=KeywordEncoder())
    np.testing.assert_allclose(again.predict(rows), p, rtol=1e-6)
    assert again.report is not None and again.report.auc == model.report.auc


@pytest.mark.parametrize("value,word", [(0, "no clicks"), (1, "no non-clicks")])
def test_pctr_refuses_one_class(click_log, value, word):
    frame = click_log[0].assign(clicked=value)
    with pytest.raises(ValueError, match=word):
        PctrModel(PctrConfig(epochs=1), encoder=KeywordEncoder()).fit(frame)


def test_calibration_table_bins():
    rows = calibration_table(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), bins=2)
    assert rows == [{"bin": 0, "count": 2, "mean_predicted": pytest.approx(0.15),
                     "observed_rate": 0.0},
                    {"bin": 1, "count": 2, "mean_predicted": pytest.approx(0.85),
                     "observed_rate": 1.0}]


@pytest.mark.slow
def test_pctr_with_packaged_encoder():
    frame, _ = synthetic_clicks(1500, seed=3)
    model = PctrModel(PctrConfig(epochs=5))
    report = model.fit(frame)
    assert report.auc > 0.7, report.summary()


# -------------------------------------------------------------------------------------------
# Reward

ADS = (Ad("Ad-0001", "Trail Runner 3", "shoes", "light trail shoes"),
       Ad("Ad-0002", "Camp Stove Mini", "camping", "small gas stove"))
REQUEST = AuctionRequest("q1", UserProfile("U-00007", "25-34", "nurse", "Lisbon, Portugal", "medium",
                                     ("running",)),
                         "best shoes for trails?", ADS, {"Ad-0001": 40.0, "Ad-0002": 10.0})


class FixedPctr:
    """Returns 0.5 for Ad-0001 and 0.2 otherwise; records its calls."""

    def __init__(self):
        self.calls = []

    def predict(self, rows):
        self.calls.append(list(rows))
        return np.array([0.5 if r["ad_id"] == "Ad-0001" else 0.2 for r in rows])


def test_pctr_reward_hand_made():
    penalty = PenaltyConfig()  # per_ad 5, free_ads 1, flooding 10, malformed 50
    responses = [
        "Try @Trail Runner 3@[Ad-0001] on rocky paths.",                     # one valid ad
        "Try @Trail Runner 3@[Ad-0001] and @Camp Stove Mini@[Ad-0002].",     # two valid ads
        "Try @Trail Runner 3@[Ad-0001 for grip.",                              # malformed
        "Just run slowly.",                                                    # no ad
    ]
    pctr = FixedPctr()
    out = pctr_rewards([REQUEST] * 4, responses, pctr, penalty)
    assert len(pctr.calls) == 1 and len(pctr.calls[0]) == 3  # one batched call, 3 exposures
    assert pctr.calls[0][0] == {"user_id": "U-00007", "ad_id": "Ad-0001",
                                "query": REQUEST.query, "response": responses[0]}
    r = rewards_array(out)
    assert r[0] == pytest.approx(40 * 0.5 - 5)
    assert r[1] == pytest.approx(40 * 0.5 + 10 * 0.2 - (2 * 5 + 10))
    assert r[2] == pytest.approx(-50)
    assert r[3] == 0.0
    assert out[1].exposed_ids == ("Ad-0001", "Ad-0002") and out[1].penalty == 20
    lam2 = pctr_rewards([REQUEST], responses[:1], FixedPctr(), penalty, lam=2.0)
    assert lam2[0].reward == pytest.approx(20 - 10)


def test_oracle_reward_uses_clicks():
    responses = ["Try @Trail Runner 3@[Ad-0001] and @Camp Stove Mini@[Ad-0002]."]
    out = oracle_rewards([REQUEST], responses, [{"Ad-0001": 1, "Ad-0002": 0}])
    assert out[0].reward == pytest.approx(40 - 20)
    with pytest.raises(KeyError, match="Ad-0002"):
        oracle_rewards([REQUEST], responses, [{"Ad-0001": 1}])
    with pytest.raises(ValueError, match="one request per response"):
        pctr_rewards([REQUEST], responses * 2, FixedPctr())


# -------------------------------------------------------------------------------------------
# Pairs

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "shoes?"}]


def test_select_pairs_threshold_and_ties():
    assert select_pairs([30.0, 5.0, 25.0, 19.9, 20.0]) == [(0, 1), (0, 3)]  # 30-20 = 10 is not > 10
    assert select_pairs([7.0, 30.0, 30.0, 0.0]) == [(1, 0), (1, 3)]  # first argmax wins the tie
    assert select_pairs([3.0, 3.0, 3.0]) == []
    assert select_pairs([]) == []
    assert select_pairs([10.0, 0.0], delta_th=0.0) == [(0, 1)]


def test_build_preference_pairs_format():
    groups = [ResponseGroup(PROMPT, ["a", "b", "c"], [30.0, 5.0, 25.0], "q1"),
              ResponseGroup(PROMPT, ["x", "y"], [1.0, 2.0], "q2"),  # within delta: no pair
              ResponseGroup(PROMPT, ["m", "n"], [-60.0, 0.0], "q3")]
    ds = build_preference_pairs(groups, delta_th=10)
    assert len(ds) == 2
    row = ds[0]
    assert row["prompt"] == PROMPT
    assert row["chosen"] == [{"role": "assistant", "content": "a"}]
    assert row["rejected"] == [{"role": "assistant", "content": "b"}]
    assert row["margin"] == 25.0 and row["prompt_id"] == "q1"
    assert ds[1]["chosen"][0]["content"] == "n" and ds[1]["margin"] == 60.0
    assert pair_stats(groups) == {"prompts": 3, "prompts_with_pairs": 2, "pairs": 2,
                                  "mean_margin": 42.5}
    empty = build_preference_pairs(groups[1:2])
    assert len(empty) == 0 and "prompt" in empty.column_names
    with pytest.raises(ValueError, match="rewards"):
        build_preference_pairs([ResponseGroup(PROMPT, ["a"], [1.0, 2.0])])


# -------------------------------------------------------------------------------------------
# DPO phase on a tiny random llama with the real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return embedded_tokenizer()


def tiny_llama(tokenizer):
    return tiny_models.tiny_llama(tokenizer, max_positions=512).train()


def dpo_pairs():
    chosen = "Try @Trail Runner 3@[Ad-0001] on rocky paths."
    rejected = "Try @Trail Runner 3@[Ad-0001 for grip and more."
    groups = [ResponseGroup([{"role": "user", "content": q}], [chosen, rejected], [15.0, -50.0],
                            f"q{i}")
              for i, q in enumerate(["best trail shoes?", "shoes for mud?", "light runners?",
                                     "grip on rocks?"])]
    return build_preference_pairs(groups)


@pytest.mark.parametrize("lora", [True, False])
def test_dpo_phase_raises_margin(tokenizer, tmp_path, lora):
    from llmauction_sim.learning.dpo import DpoConfig, completion_logprobs, run_dpo_phase

    pairs = dpo_pairs()
    model = tiny_llama(tokenizer)
    prompts = pairs["prompt"]
    chosen = [c[0]["content"] for c in pairs["chosen"]]
    rejected = [r[0]["content"] for r in pairs["rejected"]]

    def margin(m):
        return np.mean(np.array(completion_logprobs(m, tokenizer, prompts, chosen))
                       - np.array(completion_logprobs(m, tokenizer, prompts, rejected)))

    before = margin(model)
    config = DpoConfig(lora=lora, learning_rate=5e-3 if lora else 1e-3, max_steps=6,
                       batch_size=4, max_length=128)
    result = run_dpo_phase(model, tokenizer, pairs, config, output_dir=tmp_path / "adapter")
    after = margin(result.model)
    assert after > before + 1.0, (before, after)
    m = result.metrics
    assert m["logged_steps"] == 6
    assert m["rewards/margins"] > m["rewards/margins_first"]
    assert m["loss"] < m["loss_first"]
    written = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert ("adapter_config.json" in written) if lora else ("config.json" in written)
    if lora:  # a second phase on the adapted policy: its reference is that policy, not the base
        again = run_dpo_phase(result.model, tokenizer, pairs,
                              DpoConfig(lora=True, learning_rate=5e-3, max_steps=2, batch_size=4,
                                        max_length=128))
        assert list(again.model.peft_config) == ["default"]
        assert again.metrics["rewards/margins_first"] == pytest.approx(0.0, abs=1e-6)
        assert margin(again.model) > after


def test_kl_estimate():
    from llmauction_sim.learning.dpo import kl_estimate

    ref = np.array([-10.0, -12.0, -9.0, -20.0])
    assert kl_estimate(ref, ref) == pytest.approx(0.0, abs=1e-12)
    assert kl_estimate(ref + 3.0, ref) == pytest.approx(0.0, abs=1e-12)  # a constant shift
    # Reference uniform over 4 samples; policy puts 1/2, 1/6, 1/6, 1/6: KL = sum p log(4p).
    p = np.array([0.5, 1 / 6, 1 / 6, 1 / 6])
    assert kl_estimate(ref + np.log(4 * p), ref) == pytest.approx(float(np.sum(p * np.log(4 * p))))
    assert kl_estimate([0.0, -5.0], [0.0, 0.0]) > 0
    with pytest.raises(ValueError):
        kl_estimate([], [])



# --- what the pairs teach: composition, stratified cap ----------------------------------------------

def test_pair_composition_on_hand_made_samples() -> None:
    from llmauction_sim.domain.catalog import load_catalog
    from llmauction_sim.domain.mentions import validate_response
    from llmauction_sim.learning.pairs import pair_composition

    catalog = load_catalog()
    a, b, c = catalog[0], catalog[1], catalog[2]
    titles = {ad.id: ad.title for ad in (a, b, c)}
    bids = {a.id: 90.0, b.id: 40.0, c.id: 10.0}  # a is the top bid

    def rep(text):
        return validate_response(text, titles, catalog.ids)

    def m(ad):
        return f"@{ad.title}@[{ad.id}]"
    chosen = [f"Try {m(a)}.", f"Try {m(b)}.", f"Try {m(c)}.", "No ad.", f"Try {m(b)}."]
    rejected = [f"Try {m(c)}.", f"Try {m(a)}.", "No ad.", f"Try @{a.title}@[{a.id}.",
                f"Try @{a.title}@[{a.id}."]
    out = pair_composition([rep(t) for t in chosen], [rep(t) for t in rejected], [bids] * 5)
    assert out["pairs"] == 5
    assert out["valid_vs_valid"] == out["ad_vs_ad"] == 2 / 5
    assert out["ad_vs_none"] == 1 / 5 and out["none_vs_error"] == 1 / 5
    assert out["ad_vs_error"] == 1 / 5
    assert out["chosen_top_bid"] == 1 / 4  # of the 4 chosen answers with an ad, one shows a
    assert out["valid_pairs_chosen_higher_bid"] == 1 / 2  # a over c yes, b over a no
    assert sum(v for k, v in out.items() if "_vs_" in k and k != "valid_vs_valid") == 1.0
    assert pair_composition([], [], []) == {"pairs": 0.0}


def test_stratified_subset_spreads_pairs_over_prompts() -> None:
    from llmauction_sim.learning.pairs import stratified_subset

    prompt_ids = ["p0"] * 10 + ["p1"] * 2 + ["p2"] * 1 + ["p3"] * 3
    keep = stratified_subset(prompt_ids, 6, np.random.default_rng(0))
    kept = [prompt_ids[i] for i in keep]
    assert len(keep) == 6 and list(keep) == sorted(keep)
    assert set(kept) == {"p0", "p1", "p2", "p3"}  # every prompt once before any twice
    assert max(kept.count(p) for p in set(kept)) == 2
    assert len(stratified_subset(prompt_ids, 100, np.random.default_rng(0))) == 16


def test_compact_fused_head_scores_the_same_on_a_cpu() -> None:
    """The CPU patch only skips positions without a label: same log-probs, same loss."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from llmauction_sim.learning.dpo import compact_fused_head

    model = tiny_models.tiny_llama(embedded_tokenizer())
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(0, 1000, (3, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :12] = -100  # the prompt
    labels[1, 12:15] = -100
    full = model(input_ids=ids, labels=labels, fused_lm_head=True)
    with compact_fused_head():
        compact = model(input_ids=ids, labels=labels, fused_lm_head=True)
    torch.testing.assert_close(compact.log_probs, full.log_probs)
    torch.testing.assert_close(compact.loss, full.loss)
