"""Synthetic user profiles: basic info plus interests, as in the paper's 3,000 simulated users.

Interests are snake_case slugs. Most are catalog categories (so some ad fits the user); a share
comes from `UNCOVERED_INTERESTS`, topics no ad serves, so that "insert no ad" is sometimes the
right answer.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmauction_sim.domain.catalog import Catalog

AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
# Roughly the age mix of people who use chat assistants: younger adults more often.
AGE_BAND_WEIGHTS: tuple[float, ...] = (0.18, 0.26, 0.21, 0.15, 0.11, 0.09)

BUDGET_SENSITIVITIES: tuple[str, ...] = ("low", "medium", "high")
BUDGET_WEIGHTS: tuple[float, ...] = (0.25, 0.45, 0.30)

OCCUPATIONS: tuple[str, ...] = (
    "nurse", "software engineer", "high school teacher", "accountant", "graphic designer",
    "university student", "retail manager", "electrician", "pharmacist", "marketing specialist",
    "civil engineer", "chef", "freelance writer", "data analyst", "police officer",
    "dental hygienist", "lawyer", "real estate agent", "truck driver", "photographer",
    "physiotherapist", "project manager", "bank teller", "architect", "carpenter",
    "social worker", "veterinarian", "flight attendant", "barista", "sales representative",
    "research scientist", "small business owner", "HR coordinator", "mechanic", "librarian",
    "personal trainer", "customer support agent", "tour guide", "stay-at-home parent",
    "doctor",
)

REGIONS: tuple[str, ...] = (
    "Lisbon, Portugal", "Madrid, Spain", "Berlin, Germany", "Paris, France", "Milan, Italy",
    "Amsterdam, Netherlands", "Stockholm, Sweden", "Warsaw, Poland", "Dublin, Ireland",
    "London, United Kingdom", "Manchester, United Kingdom", "New York, United States",
    "Austin, United States", "Chicago, United States", "Seattle, United States",
    "Toronto, Canada", "Vancouver, Canada", "Mexico City, Mexico", "Sao Paulo, Brazil",
    "Buenos Aires, Argentina", "Sydney, Australia", "Auckland, New Zealand", "Tokyo, Japan",
    "Seoul, South Korea", "Singapore, Singapore", "Bangalore, India", "Dubai, United Arab Emirates",
    "Cape Town, South Africa", "Nairobi, Kenya", "Istanbul, Turkey",
)

# Interests no catalog ad serves; slugs like the catalog's categories. A test checks that none of
# them is a category of the packaged catalog.
UNCOVERED_INTERESTS: tuple[str, ...] = (
    "astronomy", "chess", "jazz", "birdwatching", "history_podcasts", "poetry", "philosophy",
    "knitting", "origami", "stand_up_comedy", "opera", "calligraphy", "genealogy", "archaeology",
    "marine_biology", "stamp_collecting", "crossword_puzzles", "anime", "ballet", "volunteering",
    "urban_sketching", "local_politics", "classic_films", "true_crime_podcasts", "beekeeping",
    "geocaching", "amateur_radio", "meteorology", "sailing", "rock_climbing",
)

MIN_INTERESTS = 2
MAX_INTERESTS = 4
_USER_ID = re.compile(r"U-\d{5,}", re.ASCII)
_FIELDS = ("user_id", "age_band", "occupation", "region", "budget_sensitivity", "interests")


@dataclass(frozen=True)
class UserProfile:
    user_id: str
    age_band: str
    occupation: str
    region: str
    budget_sensitivity: str
    interests: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not _USER_ID.fullmatch(self.user_id):
            raise ValueError(f"user_id {self.user_id!r} does not match 'U-NNNNN'; use 'U-' and "
                             "five zero-padded digits, e.g. 'U-00042'")
        if self.budget_sensitivity not in BUDGET_SENSITIVITIES:
            raise ValueError(f"{self.user_id}: budget_sensitivity {self.budget_sensitivity!r} "
                             f"must be one of {', '.join(BUDGET_SENSITIVITIES)}")
        # Lists and numpy arrays (e.g. read back from parquet) become a tuple of str.
        if isinstance(self.interests, str):
            raise TypeError(f"{self.user_id}: interests must be a sequence of strings, not one "
                            "string; wrap it in a list")
        object.__setattr__(self, "interests", tuple(str(x) for x in self.interests))

    def describe(self) -> str:
        """One compact line for prompts, e.g. '25-34, nurse in Lisbon, Portugal; ...'."""
        interests = ", ".join(i.replace("_", " ") for i in self.interests)
        return (f"{self.age_band}, {self.occupation} in {self.region}; "
                f"budget sensitivity: {self.budget_sensitivity}; interests: {interests}")

    def to_dict(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "age_band": self.age_band,
                "occupation": self.occupation, "region": self.region,
                "budget_sensitivity": self.budget_sensitivity, "interests": list(self.interests)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserProfile:
        missing = [k for k in _FIELDS if k not in data]
        if missing:
            raise ValueError(f"user profile lacks the key(s) {', '.join(missing)}; a profile "
                             f"needs {', '.join(_FIELDS)}")
        return cls(user_id=str(data["user_id"]), age_band=str(data["age_band"]),
                   occupation=str(data["occupation"]), region=str(data["region"]),
                   budget_sensitivity=str(data["budget_sensitivity"]),
                   interests=data["interests"])


def interest_is_covered(interest: str, catalog: Catalog) -> bool:
    """Whether some ad of the catalog serves this interest (it is one of its categories)."""
    return bool(catalog.in_category(interest))


def _pick(rng: np.random.Generator, pool: Sequence[str], taken: Sequence[str]) -> str | None:
    free = [x for x in pool if x not in taken]
    return free[int(rng.integers(len(free)))] if free else None


def generate_profiles(n: int, seed: int, catalog: Catalog,
                      uncovered_interest_rate: float = 0.25) -> list[UserProfile]:
    """``n`` profiles drawn from ``numpy.random.default_rng(seed)``; same seed, same profiles.

    Each profile has 2-4 distinct interests. The first is always a catalog category, so every
    user has at least one interest some ad serves; each further one is an uncovered topic with
    probability ``uncovered_interest_rate``, else a category. When one pool runs out of unused
    entries the other is used.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n = {n!r} must be a whole number >= 1 (the number of profiles)")
    rate = uncovered_interest_rate
    if not isinstance(rate, numbers.Real) or math.isnan(rate) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"uncovered_interest_rate = {rate!r} must be a probability in [0, 1]")
    covered = catalog.categories
    if not covered:
        raise ValueError("the catalog has no categories; profiles need at least one covered "
                         "interest, so pass a non-empty catalog")
    # A custom catalog might use one of our topics as a category; then it is not uncovered.
    covered_set = set(covered)
    uncovered = tuple(x for x in UNCOVERED_INTERESTS if x not in covered_set)

    rng = np.random.default_rng(seed)
    n = int(n)
    # Draw the scalar fields for all users at once (fast), interests per user below.
    ages = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_WEIGHTS)
    jobs = rng.integers(len(OCCUPATIONS), size=n)
    places = rng.integers(len(REGIONS), size=n)
    budgets = rng.choice(len(BUDGET_SENSITIVITIES), size=n, p=BUDGET_WEIGHTS)
    counts = rng.integers(MIN_INTERESTS, MAX_INTERESTS + 1, size=n)

    profiles = []
    for i in range(n):
        first = _pick(rng, covered, ())
        assert first is not None  # covered is non-empty
        interests = [first]
        for _ in range(int(counts[i]) - 1):
            want_uncovered = rng.random() < rate
            primary, backup = (uncovered, covered) if want_uncovered else (covered, uncovered)
            choice = _pick(rng, primary, interests) or _pick(rng, backup, interests)
            if choice is None:  # both pools used up (tiny catalog)
                break
            interests.append(choice)
        profiles.append(UserProfile(
            user_id=f"U-{i:05d}", age_band=AGE_BANDS[ages[i]], occupation=OCCUPATIONS[jobs[i]],
            region=REGIONS[places[i]], budget_sensitivity=BUDGET_SENSITIVITIES[budgets[i]],
            interests=tuple(interests)))
    return profiles


def profiles_to_frame(profiles: Iterable[UserProfile]) -> pd.DataFrame:
    """One row per profile; ``interests`` is a list column (parquet keeps it as a list)."""
    return pd.DataFrame([p.to_dict() for p in profiles], columns=list(_FIELDS))


def profiles_from_frame(df: pd.DataFrame) -> list[UserProfile]:
    """Inverse of `profiles_to_frame`; also accepts a frame read back from parquet."""
    missing = [c for c in _FIELDS if c not in df.columns]
    if missing:
        raise ValueError(f"profile frame lacks the column(s) {', '.join(missing)}; expected "
                         f"{', '.join(_FIELDS)} (as written by profiles_to_frame)")
    return [UserProfile.from_dict(row) for row in df[list(_FIELDS)].to_dict("records")]
