"""One market, two learners: bidding rounds and IRPO epochs interleaved (market/joint.py).

The policy is a tiny random llama whose answers get a valid mention appended (test_irpo's
MentioningLM), so clicks, rewards and preference pairs exist; the judge is scripted.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_irpo import KeywordEncoder, MentioningLM, ScriptedJudge
from tiny_models import embedded_tokenizer, tiny_llama

import llmauction_sim.learning.irpo as irpo
from llmauction_sim.config import ConfigError, RunConfig
from llmauction_sim.data import build_dataset
from llmauction_sim.lm.encoder import CandidateRetriever
from llmauction_sim.market.equilibrium import market_config, run_market_equilibrium


class VersionedLM(MentioningLM):
    """Records which policy (by creation order) wrote how many answers."""

    calls: list[tuple[int, int]] = []
    created = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        VersionedLM.created += 1
        self.version = VersionedLM.created

    def generate(self, prompts, params):
        VersionedLM.calls.append((self.version, len(prompts)))
        return super().generate(prompts, params)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("joint-data")
    build_dataset(RunConfig().with_overrides(["data.profiles=8", "data.query_writer=template"]),
                  folder, progress=False)
    return folder


def joint_config(data, steps=5, k=2) -> RunConfig:
    cfg = RunConfig(seed=3).with_overrides([
        f"market.data={data}", "market.queries_per_step=3", f"market.rounds_per_epoch={k}",
        "market.surrogate_rounds=5", "irpo.delta_th=0",
        "irpo.candidates_per_prompt=3", "irpo.train_queries=4", "irpo.test_queries=2",
        "ad_sampling.max_new_tokens=8", "pctr.epochs=2", "dpo.max_steps=2", "dpo.batch_size=2",
        "dpo.learning_rate=1e-3", "dpo.max_length=512", "warmstart.queries=0",
        "irpo.kl_samples=0"])
    return market_config(cfg, "llm_auction", "vm:2,um:2", steps)


def resources(packaged_catalog, text_encoder, cfg):
    tokenizer = embedded_tokenizer()
    sub = packaged_catalog[:4]
    return {"catalog": packaged_catalog, "judge": ScriptedJudge(),
            "retriever": CandidateRetriever(sub, text_encoder, cfg.retrieval.num_candidates,
                                            cfg.retrieval.profile_weight),
            "model": tiny_llama(tokenizer, hidden=32, intermediate=64, layers=1, heads=2,
                                kv_heads=1),
            "tokenizer": tokenizer, "pctr_encoder": KeywordEncoder(),
            "make_lm": lambda m, tok: VersionedLM(m, tok, name="tiny", seed=0)}


def test_bidding_rounds_and_irpo_epochs_interleave_and_resume(tmp_path, data, packaged_catalog,
                                                              text_encoder, monkeypatch):
    cfg = joint_config(data)
    VersionedLM.calls.clear()
    summary = run_market_equilibrium(cfg, tmp_path / "a", progress=False,
                                     **resources(packaged_catalog, text_encoder, cfg))
    out = tmp_path / "a"
    # 5 rounds with K=2: epochs after rounds 2 and 4; round 5 is served by the epoch-2 policy.
    assert summary["irpo_epochs"] == 2 and summary["rounds"] == 5
    blocks = pd.read_parquet(out / "blocks.parquet")
    assert list(blocks["policy_epoch"]) == [0, 1, 2]
    assert list(blocks["first_round"]) == [1, 3, 5] and list(blocks["last_round"]) == [2, 4, 5]
    assert {"multiplier_value_maximizer", "multiplier_utility_maximizer",
            "held_out_revenue_per_query"} <= set(blocks.columns)

    # Each epoch trained on its block's market rounds: their auctions and the bidders' bids.
    market = pd.read_parquet(out / "market" / "queries.parquet")
    for t, rounds in ((1, (1, 2)), (2, (3, 4))):
        log = pd.read_parquet(out / "irpo" / f"epoch-{t}" / irpo.MARKET_LOG)
        assert sorted(set(log["step"])) == list(rounds)
        assert len(log) == 2 * cfg.market.queries_per_step
        clicks = pd.read_parquet(out / "irpo" / f"epoch-{t}" / "clicks.parquet")
        assert json.loads((out / "irpo" / f"epoch-{t}" / "collect.json").read_text())[
            "source"] == "market"
        block = market[market["step"].isin(rounds)]
        assert len(clicks) == block["exposed"].map(len).sum()
        assert clicks["clicked"].sum() == block["clicked"].map(len).sum()
        logged_bids = {(f"{q}#{i}", a): float(b) for i, (q, bids) in
                       enumerate(zip(block["query_id"], block["bids"]))
                       for a, b in bids}  # (ad, bid) pairs of the map column
        for qid, ad, bid in zip(clicks["query_id"], clicks["ad_id"], clicks["bid"]):
            assert logged_bids[(qid, ad)] == bid
        samples = pd.read_parquet(out / "irpo" / f"epoch-{t}" / "samples.parquet")
        assert set(samples["query_id"]) == {f"{q}#{i}" for i, q in enumerate(block["query_id"])}

    # The market's rounds 3-4 were answered by a policy created after epoch 1's DPO: the
    # market's generate calls (3 prompts each) came from three successive policies.
    market_versions = [v for v, n in VersionedLM.calls if n == cfg.market.queries_per_step]
    assert len(market_versions) == 5
    assert market_versions[0] == market_versions[1] < market_versions[2] == market_versions[3] \
        < market_versions[4]

    # Killed in epoch 2's DPO, then resumed: the same market and the same policy.
    real_dpo = irpo.dpo_phase

    def dies_in_epoch_2(run, t, pairs):
        if t == 2:
            raise KeyboardInterrupt("killed")
        return real_dpo(run, t, pairs)

    monkeypatch.setattr(irpo, "dpo_phase", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_market_equilibrium(cfg, tmp_path / "b", progress=False,
                               **resources(packaged_catalog, text_encoder, cfg))
    monkeypatch.setattr(irpo, "dpo_phase", real_dpo)
    with pytest.raises(FileExistsError, match="--resume"):
        run_market_equilibrium(cfg, tmp_path / "b", progress=False,
                               **resources(packaged_catalog, text_encoder, cfg))
    resumed = run_market_equilibrium(cfg, tmp_path / "b", resume=True, progress=False,
                                     **resources(packaged_catalog, text_encoder, cfg))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "rounds.parquet"),
                                  pd.read_parquet(out / "rounds.parquet"))
    assert resumed["advertisers"] == summary["advertisers"]


def test_joint_schedule_needs_a_single_pass_policy(tmp_path, data):
    cfg = joint_config(data).with_overrides(["market.mechanism=mosaic"])
    with pytest.raises(ConfigError, match="llm_auction"):
        run_market_equilibrium(cfg, tmp_path, progress=False)
    cfg = joint_config(data).with_overrides(["mechanisms.llm_auction.adapter=x"])
    with pytest.raises(ConfigError, match="ad_llm"):
        run_market_equilibrium(cfg, tmp_path, progress=False)
