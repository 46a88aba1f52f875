"""Sentence encoder, on-disk catalog embeddings, and top-K candidate retrieval."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmauction_sim.lm.encoder import CandidateRetriever, TextEncoder, catalog_embeddings

MARATHON = "Which running shoes are best for my first marathon?"
GIFT = "What gift should I buy for a friend?"


# --- TextEncoder -------------------------------------------------------------------------------

def test_vectors_are_unit_norm_384d(text_encoder: TextEncoder) -> None:
    vecs = text_encoder.encode([MARATHON, GIFT, "tea"])
    assert text_encoder.dim == 384
    assert vecs.shape == (3, 384)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_identical_texts_identical_vectors(text_encoder: TextEncoder) -> None:
    vecs = text_encoder.encode([MARATHON, GIFT, MARATHON])
    np.testing.assert_array_equal(vecs[0], vecs[2])
    assert not np.allclose(vecs[0], vecs[1])
    np.testing.assert_array_equal(text_encoder.encode([MARATHON])[0], vecs[0])


def test_empty_input(text_encoder: TextEncoder) -> None:
    assert text_encoder.encode([]).shape == (0, 384)


def test_memo_avoids_recomputing(text_encoder: TextEncoder, monkeypatch) -> None:
    text = "How do I keep basil alive on a windowsill?"
    first = text_encoder.encode([text])
    assert text in text_encoder._memo

    calls: list[list[str]] = []
    original = text_encoder.model.encode

    def counting(texts, **kwargs):
        calls.append(list(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(text_encoder.model, "encode", counting)
    again = text_encoder.encode([text, text])
    assert calls == []  # served from the memo
    np.testing.assert_array_equal(again[0], first[0])
    other = "Which e-reader has the best screen for night reading?"
    text_encoder.encode([text, other, other])
    assert calls == [[other]]  # only the new text, once


# --- catalog_embeddings --------------------------------------------------------------------------

def test_catalog_embeddings_cached_on_disk(packaged_catalog, text_encoder, tmp_path: Path,
                                           monkeypatch) -> None:
    monkeypatch.setenv("LLMAUCTION_CACHE", str(tmp_path))
    vecs = catalog_embeddings(packaged_catalog, text_encoder)
    assert vecs.shape == (len(packaged_catalog), 384)
    files = list((tmp_path / "embeddings").glob("*.npy"))
    assert len(files) == 1 and files[0].name.startswith("catalog-")
    assert not list((tmp_path / "embeddings").glob("*.tmp*"))
    np.testing.assert_array_equal(np.load(files[0]), vecs)

    def boom(texts):
        raise AssertionError("the second call must load the cache file, not encode again")

    monkeypatch.setattr(text_encoder, "encode", boom)
    np.testing.assert_array_equal(catalog_embeddings(packaged_catalog, text_encoder), vecs)


def test_catalog_embeddings_key_depends_on_catalog(packaged_catalog, text_encoder,
                                                   tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMAUCTION_CACHE", str(tmp_path))
    catalog_embeddings(packaged_catalog, text_encoder)
    small = packaged_catalog[:5]
    vecs = catalog_embeddings(small, text_encoder)
    assert vecs.shape == (5, 384)
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 2


# --- CandidateRetriever --------------------------------------------------------------------------

@pytest.fixture
def isolated_cache(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("LLMAUCTION_CACHE", str(tmp_path_factory.mktemp("cache")))


def test_returns_k_distinct_ads_sorted_by_relevance(packaged_catalog, text_encoder,
                                                    profile_factory, isolated_cache) -> None:
    retriever = CandidateRetriever(packaged_catalog, text_encoder, 6, profile_weight=0.35)
    profiles = [profile_factory("yoga", "tea"), profile_factory("laptops", user_id="U-00002")]
    queries = [MARATHON, GIFT]
    result = retriever.retrieve(profiles, queries)
    scores = retriever.relevance(profiles, queries)
    assert len(result) == 2
    for row, row_scores in zip(result, scores, strict=True):
        assert len(row) == 6
        assert len({ad.id for ad in row}) == 6
        got = [row_scores[packaged_catalog.index_of(ad.id)] for ad in row]
        assert got == sorted(got, reverse=True)
        # The K best: nothing left out scores higher than the weakest one kept.
        assert np.sort(row_scores)[-6] == pytest.approx(got[-1])


def test_all_returns_whole_catalog(packaged_catalog, text_encoder, profile_factory,
                                   isolated_cache) -> None:
    retriever = CandidateRetriever(packaged_catalog, text_encoder, "all")
    assert retriever.k == len(packaged_catalog)
    profile = profile_factory("coffee")
    (row,) = retriever.retrieve([profile], [GIFT])
    assert sorted(ad.id for ad in row) == sorted(packaged_catalog.ids)
    scores = retriever.relevance([profile], [GIFT])[0]
    got = [scores[packaged_catalog.index_of(ad.id)] for ad in row]
    assert got == sorted(got, reverse=True)


def test_running_shoes_query_finds_running_shoes(packaged_catalog, text_encoder,
                                                 profile_factory, isolated_cache) -> None:
    retriever = CandidateRetriever(packaged_catalog, text_encoder, 3, profile_weight=0.35)
    (row,) = retriever.retrieve([profile_factory("yoga", "tea")], [MARATHON])
    assert "running_shoes" in [ad.category for ad in row]


def test_profile_weight_pulls_toward_interests(packaged_catalog, text_encoder, profile_factory,
                                               isolated_cache) -> None:
    runner = profile_factory("running_shoes")
    tea_lover = profile_factory("tea", user_id="U-00002")

    def categories(weight: float, profile) -> list[str]:
        retriever = CandidateRetriever(packaged_catalog, text_encoder, 5, profile_weight=weight)
        return [ad.category for ad in retriever.retrieve([profile], [GIFT])[0]]

    # Weight 0: the query alone decides, whoever asks.
    assert categories(0.0, runner) == categories(0.0, tea_lover)
    assert "running_shoes" not in categories(0.0, runner)
    # A high weight puts the profile's interest first, and more of it than a low weight.
    counts = [categories(w, runner).count("running_shoes") for w in (0.0, 0.35, 0.8)]
    assert counts == sorted(counts) and counts[-1] >= 2
    assert categories(0.8, runner)[0] == "running_shoes"
    assert categories(0.8, tea_lover)[0] == "tea"


@pytest.mark.parametrize("k", [0, -1, 101])
def test_k_out_of_range(packaged_catalog, text_encoder, k: int, isolated_cache) -> None:
    with pytest.raises(ValueError, match="num_candidates"):
        CandidateRetriever(packaged_catalog, text_encoder, k)


def test_mismatched_lengths_raise(packaged_catalog, text_encoder, profile_factory,
                                  isolated_cache) -> None:
    retriever = CandidateRetriever(packaged_catalog, text_encoder, 3)
    with pytest.raises(ValueError, match="1 profiles for 2 queries"):
        retriever.retrieve([profile_factory("tea")], [MARATHON, GIFT])
    assert retriever.retrieve([], []) == []
