"""The embedded model end to end: Ad-LLM answers, User-LLM queries, and `llmauction answer`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from llmauction_sim.cli import main
from llmauction_sim.config import ModelConfig, RunConfig
from llmauction_sim.data import build_dataset
from llmauction_sim.domain.mentions import format_penalty, validate_response
from llmauction_sim.domain.users import generate_profiles
from llmauction_sim.lm.base import SamplingParams
from llmauction_sim.lm.prompts import ad_llm_messages
from llmauction_sim.lm.query_writer import clean_query
from llmauction_sim.lm.registry import load_language_model

pytestmark = pytest.mark.slow

QUERIES = ("Which running shoes are best for my first marathon?",
           "How do I brew a strong cup of tea without bitterness?")
MAX_NEW = 24


@pytest.fixture(scope="module")
def lm():
    return load_language_model(ModelConfig())


@pytest.fixture(scope="module")
def ad_prompts(packaged_catalog):
    profiles = generate_profiles(2, 0, packaged_catalog)
    candidates = [packaged_catalog.by_id("Ad-4820"), packaged_catalog.by_id("Ad-8617"),
                  *packaged_catalog.in_category("tea")[:2]]
    bids = {ad.id: b for ad, b in zip(candidates, (37, 88, 12, 64), strict=True)}
    prompts = [ad_llm_messages(p, q, candidates, bids) for p, q in zip(profiles, QUERIES,
                                                                        strict=True)]
    return prompts, candidates, bids


def ad_params(seeds=(11, 12)) -> list[SamplingParams]:
    sampling = RunConfig().ad_sampling  # the paper's T=0.7, top-p 0.8, top-k 20
    return [SamplingParams.from_config(sampling, seed=s, max_new_tokens=MAX_NEW) for s in seeds]


@pytest.fixture(scope="module")
def ad_answers(lm, ad_prompts):
    return lm.generate(ad_prompts[0], ad_params())


def test_ad_llm_answers(ad_answers) -> None:
    assert [len(row) for row in ad_answers] == [1, 1]
    for (completion,) in ad_answers:
        assert completion.text.strip()
        assert 1 <= completion.num_tokens <= MAX_NEW
        assert completion.finished or completion.num_tokens == MAX_NEW


def test_ad_llm_reproducible_from_seeds(ad_answers, ad_prompts) -> None:
    # Another model object with another generator seed: the per-prompt seeds decide.
    other = load_language_model(ModelConfig(), seed=123)
    assert other.generate(ad_prompts[0], ad_params()) == ad_answers


def test_validate_real_answers(ad_answers, ad_prompts, packaged_catalog) -> None:
    _, candidates, _ = ad_prompts
    titles = {ad.id: ad.title for ad in candidates}
    for (completion,) in ad_answers:
        report = validate_response(completion.text, titles, packaged_catalog.ids)
        assert set(report.exposed_ids) <= set(titles)
        assert len(set(report.exposed_ids)) == report.num_ads
        assert sum(report.error_counts().values()) == report.num_errors
        assert report.has_format_error == (report.num_errors > 0)
        penalty = format_penalty(report, RunConfig().penalty)
        assert penalty >= 0
        assert (penalty == 0) == (report.num_ads == 0 and report.num_errors == 0)


@pytest.fixture(scope="module")
def llm_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("llm-data")
    config = RunConfig().with_overrides(["data.profiles=2", "data.queries_per_profile=2"])
    result = build_dataset(config, out, progress=False)
    assert result.num_profiles == 2
    return out


def test_llm_queries_are_clean(llm_data: Path) -> None:
    queries = pd.read_parquet(llm_data / "queries.parquet")
    assert 1 <= len(queries) <= 4
    for q in queries["query"]:
        assert clean_query(q) == (q, "ok")
    for _, group in queries.groupby("user_id"):
        assert group["query"].is_unique


def test_cli_answer(llm_data: Path, capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMAUCTION_CACHE", str(tmp_path))  # catalog embeddings only
    code = main(["answer", "--data", str(llm_data), "--split", "all", "--num-queries", "2",
                 "--set", f"ad_sampling.max_new_tokens={MAX_NEW}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "answers in" in out
    assert out.count("\n=== Q-") == 2
    assert out.count("\nA: ") == 2


def test_cli_simulate(llm_data: Path, capsys, tmp_path: Path) -> None:
    """A tiny market on the embedded model: real Ad-LLM answers, the default click judge."""
    out = tmp_path / "run"
    code = main(["simulate", "--out", str(out), "--steps", "2", "--queries-per-step", "2",
                 "--data", str(llm_data), "--seed", "5", "--quiet", "--show-answers", "1",
                 "--set", "market.split=all", "--set", "ad_sampling.max_new_tokens=48"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "revenue_per_query" in printed and "\nA: " in printed
    queries = pd.read_parquet(out / "queries.parquet")
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(queries) == 4 and list(metrics["step"]) == [1, 2]
    assert all(queries["response"].str.len() > 0)
    for _, row in queries.iterrows():
        assert set(row["clicked"]) <= set(row["exposed"]) <= set(row["candidates"])
    assert (out / "metrics.png").stat().st_size > 1000


def test_irpo_on_the_embedded_model_then_evaluate_the_trained_policy(tmp_path, capsys) -> None:
    """`llmauction irpo`: warm start, one tiny epoch (collect, pCTR, sample, pairs, DPO,
    evaluate) on the real model; then `evaluate --checkpoint` loads the trained policy."""
    import json

    data = tmp_path / "data"
    build_dataset(RunConfig().with_overrides(["data.profiles=8", "data.query_writer=template"]),
                  data, progress=False)
    tiny = ["--set", "ad_sampling.max_new_tokens=24", "--set", "irpo.samples_per_query=2",
            "--set", "irpo.candidates_per_prompt=2", "--set", "irpo.kl_samples=2",
            "--set", "warmstart.queries=2", "--set", "warmstart.epochs=1",
            "--set", "dpo.max_steps=1", "--set", "dpo.batch_size=1", "--set", "pctr.epochs=1",
            # a delta_th of 0 keeps any strictly better answer: a pair is likely even here
            "--set", "irpo.delta_th=0"]
    run = tmp_path / "irpo"
    assert main(["irpo", "--epochs", "1", "--train-queries", "2", "--test-queries", "2",
                 "--data", str(data), "--out", str(run), "--quiet", *tiny]) == 0
    epochs = pd.read_parquet(run / "epochs.parquet")
    assert list(epochs["epoch"]) == [0, 1]
    assert (run / "epoch-0" / "policy" / "config.json").is_file()  # the warm-started model
    summary = json.loads((run / "summary.json").read_text())
    assert summary["warm_start"] and summary["policy"]["checkpoint"].endswith("epoch-0/policy")
    capsys.readouterr()
    assert main(["evaluate", "--mechanism", "llm_auction", "--checkpoint", str(run),
                 "--test-queries", "2", "--data", str(data), "--out", str(tmp_path / "eval"),
                 "--set", "ad_sampling.max_new_tokens=24"]) == 0
    config = json.loads((tmp_path / "eval" / "config.json").read_text())
    assert config["mechanisms"]["llm_auction"]["checkpoint"] == summary["policy"]["checkpoint"]
    assert config["mechanisms"]["llm_auction"]["adapter"] == summary["policy"]["adapter"]


def test_demo_shows_a_market_with_ads_and_the_bid_blind_comparison(llm_data: Path, capsys,
                                                                   tmp_path: Path) -> None:
    """`llmauction demo` (small): the default mechanism on the shipped warm start exposes ads,
    and the demo prints it against the bid-blind warm start on the same auctions."""
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--steps", "1", "--queries-per-step", "8",
                 "--data", str(llm_data), "--quiet", "--set", "market.split=all"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary["mechanism"] == "llm_auction_tilted" and summary["exposures"] > 0
    assert "same queries and bids" in printed and "llm_auction (bid-blind)" in printed
    queries = pd.read_parquet(out / "queries.parquet")
    assert (queries["format_errors"] == 0).all()  # the tilted decoder writes mentions itself


def test_cli_evaluate_compares_mechanisms_on_the_same_auctions(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    build_dataset(RunConfig().with_overrides(["data.profiles=12", "data.query_writer=template"]),
                  data, progress=False)
    out = tmp_path / "compare"
    code = main(["evaluate", "--mechanism", "llm_auction,llm_auction_tilted", "--test-queries",
                 "4", "--data", str(data), "--out", str(out), "--quiet",
                 "--set", "ad_sampling.max_new_tokens=48"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert "Paired differences against `llm_auction`" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["mechanism"]) == ["llm_auction", "llm_auction_tilted"]
    assert (table["auctions"] == 4).all()
    logs = [pd.read_parquet(out / m / "queries.parquet") for m in table["mechanism"]]
    assert list(logs[0]["query_id"]) == list(logs[1]["query_id"])
    assert [dict(b) for b in logs[0]["bids"]] == [dict(b) for b in logs[1]["bids"]]
