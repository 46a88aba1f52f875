from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_near_linear

from llmauction_sim.domain.catalog import Ad, Catalog, load_catalog
from llmauction_sim.domain.users import (
    AGE_BANDS,
    BUDGET_SENSITIVITIES,
    OCCUPATIONS,
    REGIONS,
    UNCOVERED_INTERESTS,
    UserProfile,
    generate_profiles,
    interest_is_covered,
    profiles_from_frame,
    profiles_to_frame,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def profiles(catalog: Catalog) -> list[UserProfile]:
    return generate_profiles(3000, seed=7, catalog=catalog)


def _profile(**overrides: object) -> UserProfile:
    fields: dict = {"user_id": "U-00042", "age_band": "25-34", "occupation": "nurse",
                    "region": "Lisbon, Portugal", "budget_sensitivity": "high",
                    "interests": ("running_shoes", "coffee", "jazz")}
    fields.update(overrides)
    return UserProfile(**fields)


def test_same_seed_same_profiles(catalog: Catalog) -> None:
    assert generate_profiles(200, 3, catalog) == generate_profiles(200, 3, catalog)


def test_different_seeds_differ(catalog: Catalog) -> None:
    a = generate_profiles(200, 3, catalog)
    b = generate_profiles(200, 4, catalog)
    assert [p.user_id for p in a] == [p.user_id for p in b]
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 150


def test_three_thousand_profiles(catalog: Catalog) -> None:
    assert_near_linear(lambda: generate_profiles(375, 0, catalog),
                       lambda: generate_profiles(3000, 0, catalog), 8)
    profiles = generate_profiles(3000, 0, catalog)
    assert len(profiles) == 3000
    assert [p.user_id for p in profiles[:3]] == ["U-00000", "U-00001", "U-00002"]
    assert profiles[-1].user_id == "U-02999"
    assert len({p.user_id for p in profiles}) == 3000


def test_fields_come_from_the_lists(profiles: list[UserProfile]) -> None:
    for p in profiles:
        assert p.age_band in AGE_BANDS
        assert p.occupation in OCCUPATIONS
        assert p.region in REGIONS
        assert p.budget_sensitivity in BUDGET_SENSITIVITIES
    # Every list is actually used, not one constant value.
    assert {p.age_band for p in profiles} == set(AGE_BANDS)
    assert {p.budget_sensitivity for p in profiles} == set(BUDGET_SENSITIVITIES)
    assert len({p.occupation for p in profiles}) == len(OCCUPATIONS)
    assert len({p.region for p in profiles}) == len(REGIONS)


def test_interest_counts_and_coverage(profiles: list[UserProfile], catalog: Catalog) -> None:
    counts = {len(p.interests) for p in profiles}
    assert counts == {2, 3, 4}
    for p in profiles:
        assert len(set(p.interests)) == len(p.interests)
        assert interest_is_covered(p.interests[0], catalog)
        for interest in p.interests:
            assert interest in catalog.categories or interest in UNCOVERED_INTERESTS
    later = [i for p in profiles for i in p.interests[1:]]
    share = sum(not interest_is_covered(i, catalog) for i in later) / len(later)
    assert 0.20 < share < 0.30  # default rate 0.25


def test_rate_zero_all_covered(catalog: Catalog) -> None:
    for p in generate_profiles(500, 1, catalog, uncovered_interest_rate=0.0):
        assert all(interest_is_covered(i, catalog) for i in p.interests)


def test_rate_one_all_but_first_uncovered(catalog: Catalog) -> None:
    for p in generate_profiles(500, 1, catalog, uncovered_interest_rate=1.0):
        assert interest_is_covered(p.interests[0], catalog)
        assert not any(interest_is_covered(i, catalog) for i in p.interests[1:])


def test_uncovered_interests_disjoint_from_catalog(catalog: Catalog) -> None:
    assert len(UNCOVERED_INTERESTS) >= 25
    assert len(set(UNCOVERED_INTERESTS)) == len(UNCOVERED_INTERESTS)
    assert not set(UNCOVERED_INTERESTS) & set(catalog.categories)
    assert not any(interest_is_covered(i, catalog) for i in UNCOVERED_INTERESTS)
    assert all(interest_is_covered(c, catalog) for c in catalog.categories)


def test_custom_catalog_overlap_is_not_uncovered() -> None:
    # A catalog whose only category is also an "uncovered" topic: it must count as covered.
    tiny = Catalog([Ad("Ad-1000", "Star Scope", "astronomy", "Telescopes."),
                    Ad("Ad-2000", "Brew Spot", "coffee", "Beans.")])
    for p in generate_profiles(200, 0, tiny, uncovered_interest_rate=1.0):
        assert p.interests[0] in ("astronomy", "coffee")
        assert all(i in UNCOVERED_INTERESTS for i in p.interests[1:])
        assert "astronomy" not in p.interests[1:]


def test_tiny_catalog_falls_back_to_other_pool() -> None:
    tiny = Catalog([Ad("Ad-1000", "Brew Spot", "coffee", "Beans.")])
    profiles = generate_profiles(100, 0, tiny, uncovered_interest_rate=0.0)
    for p in profiles:
        assert p.interests[0] == "coffee"
        assert all(i in UNCOVERED_INTERESTS for i in p.interests[1:])
    assert {len(p.interests) for p in profiles} == {2, 3, 4}


def test_describe() -> None:
    assert _profile().describe() == ("25-34, nurse in Lisbon, Portugal; budget sensitivity: high; "
                                     "interests: running shoes, coffee, jazz")


def test_dict_round_trip(profiles: list[UserProfile]) -> None:
    d = profiles[0].to_dict()
    assert isinstance(d["interests"], list)
    assert UserProfile.from_dict(d) == profiles[0]
    with pytest.raises(ValueError, match="lacks the key\\(s\\) region"):
        UserProfile.from_dict({k: v for k, v in d.items() if k != "region"})


def test_frame_round_trip(profiles: list[UserProfile], tmp_path: Path) -> None:
    df = profiles_to_frame(profiles[:100])
    assert list(df.columns) == ["user_id", "age_band", "occupation", "region",
                                "budget_sensitivity", "interests"]
    assert isinstance(df["interests"].iloc[0], list)
    assert profiles_from_frame(df) == profiles[:100]
    path = tmp_path / "profiles.parquet"
    df.to_parquet(path)
    assert profiles_from_frame(pd.read_parquet(path)) == profiles[:100]


def test_frame_missing_column() -> None:
    df = profiles_to_frame([_profile()]).drop(columns=["interests"])
    with pytest.raises(ValueError, match="lacks the column\\(s\\) interests"):
        profiles_from_frame(df)


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_bad_n(catalog: Catalog, n: object) -> None:
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        generate_profiles(n, 0, catalog)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "0.5"])
def test_bad_rate(catalog: Catalog, rate: object) -> None:
    with pytest.raises(ValueError, match="must be a probability in \\[0, 1\\]"):
        generate_profiles(5, 0, catalog, uncovered_interest_rate=rate)  # type: ignore[arg-type]


def test_empty_catalog_rejected() -> None:
    with pytest.raises(ValueError, match="no categories"):
        generate_profiles(5, 0, Catalog([]))


@pytest.mark.parametrize("overrides, message", [
    ({"user_id": "u42"}, "does not match 'U-NNNNN'"),
    ({"user_id": "U-42"}, "does not match 'U-NNNNN'"),
    ({"budget_sensitivity": "extreme"}, "must be one of low, medium, high"),
])
def test_profile_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _profile(**overrides)


def test_interests_must_not_be_one_string() -> None:
    with pytest.raises(TypeError, match="not one string; wrap it in a list"):
        _profile(interests="coffee")
