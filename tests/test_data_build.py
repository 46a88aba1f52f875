"""`build_dataset` with the template writer: files, splits, determinism, reuse and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import llmauction_sim.data as data
from llmauction_sim.config import RunConfig
from llmauction_sim.data import build_dataset, load_dataset, split_profiles
from llmauction_sim.lm.query_writer import TemplateQueryWriter, clean_query, normalize

PROFILE_COLUMNS = ["user_id", "age_band", "occupation", "region", "budget_sensitivity",
                   "interests", "split"]
QUERY_COLUMNS = ["query_id", "user_id", "split", "topic", "query"]
NUM_PROFILES, PER_PROFILE, TEST_FRACTION = 20, 3, 0.25


def template_config(seed: int = 0, **data_fields) -> RunConfig:
    fields = {"query_writer": "template", "profiles": NUM_PROFILES,
              "queries_per_profile": PER_PROFILE, "test_fraction": TEST_FRACTION, **data_fields}
    return RunConfig().with_overrides([f"seed={seed}"] + [f"data.{k}={v}"
                                                          for k, v in fields.items()])


def read(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.read_parquet(folder / "profiles.parquet"),
            pd.read_parquet(folder / "queries.parquet"))


def assert_same_build(a: Path, b: Path) -> None:
    for x, y in zip(read(a), read(b), strict=True):
        pd.testing.assert_frame_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, data.BuildResult]:
    out = tmp_path_factory.mktemp("reference")
    return out, build_dataset(template_config(), out, progress=False)


def test_files_and_columns(reference) -> None:
    out, result = reference
    assert {p.name for p in out.iterdir()} == {"profiles.parquet", "queries.parquet",
                                               "manifest.json", "run.json", ".lock"}
    assert json.loads((out / "run.json").read_text())["kind"] == "data"
    profiles, queries = read(out)
    assert list(profiles.columns) == PROFILE_COLUMNS
    assert list(queries.columns) == QUERY_COLUMNS
    assert len(profiles) == NUM_PROFILES and profiles["user_id"].is_unique
    assert all(len(i) >= 2 for i in profiles["interests"])
    assert not result.reused
    assert (result.num_profiles, result.num_queries) == (NUM_PROFILES, len(queries))
    assert result.short_profiles == 0 and len(queries) == NUM_PROFILES * PER_PROFILE
    assert list(queries["query_id"]) == [f"Q-{i:06d}" for i in range(len(queries))]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["writer"] == "template"
    assert manifest["counts"]["queries"] == len(queries)
    assert manifest["counts"]["train_queries"] + manifest["counts"]["test_queries"] == len(queries)
    assert manifest["settings"]["seed"] == 0
    assert manifest["settings"]["data"]["profiles"] == NUM_PROFILES


def test_queries_are_valid_distinct_and_on_topic(reference) -> None:
    profiles, queries = read(reference[0])
    interests = {u: set(i) for u, i in zip(profiles["user_id"], profiles["interests"])}
    for user, group in queries.groupby("user_id"):
        assert len(group) == PER_PROFILE
        assert len({normalize(q) for q in group["query"]}) == PER_PROFILE
        assert set(group["topic"]) <= interests[user]
    for q in queries["query"]:
        assert clean_query(q) == (q, "ok")


def test_split_is_by_profile(reference) -> None:
    profiles, queries = read(reference[0])
    assert set(profiles["split"]) == {"train", "test"}
    test_users = set(profiles.loc[profiles["split"] == "test", "user_id"])
    assert len(test_users) == round(NUM_PROFILES * TEST_FRACTION)
    by_user = dict(zip(profiles["user_id"], profiles["split"]))
    assert all(by_user[u] == s for u, s in zip(queries["user_id"], queries["split"]))
    assert queries.groupby("user_id")["split"].nunique().max() == 1
    assert set(queries.loc[queries["split"] == "test", "user_id"]) == test_users


@pytest.mark.parametrize("n, fraction", [(20, 0.2), (7, 0.5), (10, 0.0), (10, 1.0), (1000, 0.2)])
def test_split_profiles_share(n: int, fraction: float) -> None:
    split = split_profiles(n, fraction, seed=3)
    assert len(split) == n
    assert (split == "test").sum() == round(n * fraction)
    assert list(split) == list(split_profiles(n, fraction, seed=3))


def test_same_seed_same_files(reference, tmp_path: Path) -> None:
    build_dataset(template_config(), tmp_path / "again", progress=False)
    assert_same_build(reference[0], tmp_path / "again")


def test_other_seed_differs(reference, tmp_path: Path) -> None:
    build_dataset(template_config(seed=1), tmp_path / "other", progress=False)
    for x, y in zip(read(reference[0]), read(tmp_path / "other"), strict=True):
        assert not x.equals(y)


def test_second_call_reuses(tmp_path: Path) -> None:
    config = template_config(profiles=6, queries_per_profile=2)
    first = build_dataset(config, tmp_path, progress=False)
    stamp = (tmp_path / "queries.parquet").stat().st_mtime_ns
    second = build_dataset(config, tmp_path, progress=False)
    assert second.reused and not first.reused
    assert (second.num_profiles, second.num_queries, second.short_profiles, second.rejected) == (
        first.num_profiles, first.num_queries, first.short_profiles, first.rejected)
    assert (tmp_path / "queries.parquet").stat().st_mtime_ns == stamp
    # Other settings in the same folder: built again, not reused.
    third = build_dataset(template_config(seed=4, profiles=6, queries_per_profile=2), tmp_path,
                          progress=False)
    assert not third.reused
    assert json.loads((tmp_path / "manifest.json").read_text())["settings"]["seed"] == 4


def _interrupt_after_first_part(monkeypatch, per_part: int) -> list:
    """Make the template writer fail on any profile past the first part; returns its call log."""
    original = TemplateQueryWriter.candidates
    calls: list[list[int]] = []

    def failing(self, requests, attempt):
        indices = [r[0] for r in requests]
        calls.append(indices)
        if max(indices) >= per_part:
            raise RuntimeError("interrupted")
        return original(self, requests, attempt)

    monkeypatch.setattr(TemplateQueryWriter, "candidates", failing)
    return calls


def test_resume_after_interruption(reference, tmp_path: Path, monkeypatch) -> None:
    per_part = 8
    monkeypatch.setattr(data, "PROFILES_PER_PART", per_part)
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _interrupt_after_first_part(m, per_part)
        with pytest.raises(RuntimeError, match="interrupted"):
            build_dataset(template_config(), out, progress=False)
    parts = out / ".parts"
    assert {p.name for p in parts.iterdir()} == {"settings.json", "queries-000000.parquet",
                                                 "rejected-000000.json"}
    assert not (out / "queries.parquet").exists() and not (out / "manifest.json").exists()

    # The rerun does only the missing parts and ends equal to an uninterrupted build.
    original = TemplateQueryWriter.candidates
    seen: list[int] = []

    def recording(self, requests, attempt):
        seen.extend(r[0] for r in requests)
        return original(self, requests, attempt)

    monkeypatch.setattr(TemplateQueryWriter, "candidates", recording)
    result = build_dataset(template_config(), out, progress=False)
    assert seen and min(seen) >= per_part
    assert not result.reused and not parts.exists()
    assert_same_build(reference[0], out)
    ref_result = reference[1]
    assert (result.num_queries, result.short_profiles, result.rejected) == (
        ref_result.num_queries, ref_result.short_profiles, ref_result.rejected)


def test_leftover_parts_with_other_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(data, "PROFILES_PER_PART", 8)
    with monkeypatch.context() as m:
        _interrupt_after_first_part(m, 8)
        with pytest.raises(RuntimeError):
            build_dataset(template_config(), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"partial build with other settings; delete that "
                                         r"folder or use another --out") as info:
        build_dataset(template_config(seed=2), tmp_path, progress=False)
    assert str(tmp_path / ".parts") in str(info.value)
    # The partial build is left alone, and the original settings still resume it.
    assert (tmp_path / ".parts" / "queries-000000.parquet").is_file()
    assert build_dataset(template_config(), tmp_path, progress=False).num_profiles == NUM_PROFILES


def test_load_dataset(reference, tmp_path: Path) -> None:
    profiles, queries = load_dataset(reference[0])
    expected = read(reference[0])
    pd.testing.assert_frame_equal(profiles, expected[0])
    pd.testing.assert_frame_equal(queries, expected[1])
    with pytest.raises(FileNotFoundError, match="missing profiles.parquet, queries.parquet") as e:
        load_dataset(tmp_path)
    assert f"llmauction data build --out {tmp_path}" in str(e.value)
    (tmp_path / "profiles.parquet").write_bytes((reference[0] / "profiles.parquet").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"missing queries.parquet\)"):
        load_dataset(tmp_path)
