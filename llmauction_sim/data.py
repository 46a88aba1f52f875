"""`llmauction data build`: synthetic profiles and their User-LLM queries, split by profile.

Work is checkpointed per chunk of profiles under ``OUT/.parts``; an interrupted build resumes there,
and a finished build with the same settings is reused as is.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from llmauction_sim.config import RunConfig
from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.domain.users import generate_profiles, profiles_to_frame
from llmauction_sim.lm.query_writer import (
    LLMQueryWriter,
    TemplateQueryWriter,
    clean_query,
    normalize,
    topics_for,
)
from llmauction_sim.manifest import environment, write_json
from llmauction_sim.runfolder import open_run_folder, temp_path

PROFILES_PER_PART = 128


@dataclass(frozen=True)
class BuildResult:
    out: Path
    num_profiles: int
    num_queries: int
    short_profiles: int
    rejected: dict[str, int]
    seconds: float
    reused: bool = False


def split_profiles(num_profiles: int, test_fraction: float, seed: int) -> np.ndarray:
    """'train'/'test' per profile: a seeded permutation puts round(n * fraction) in test."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    n_test = int(round(num_profiles * test_fraction))
    split = np.full(num_profiles, "train", dtype=object)
    split[rng.permutation(num_profiles)[:n_test]] = "test"
    return split


def _build_settings(config: RunConfig) -> dict:
    return {"seed": config.seed, "data": config.data.to_dict(),
            "user_llm": config.user_llm.to_dict(), "user_sampling": config.user_sampling.to_dict()}


def write_queries_for(writer, profiles, first_index: int, per_profile: int, max_attempts: int
                      ) -> tuple[list[dict], Counter]:
    """Fill `per_profile` valid, distinct queries for each profile, retrying what failed."""
    accepted: list[list[tuple[str, str]]] = [[] for _ in profiles]
    seen: list[set[str]] = [set() for _ in profiles]
    rejected: Counter = Counter()
    for attempt in range(max_attempts):
        requests = []
        for k, p in enumerate(profiles):
            missing = per_profile - len(accepted[k])
            topics = topics_for(p, missing, start=len(accepted[k]))
            requests += [(first_index + k, p, t, len(accepted[k]) + j)
                         for j, t in enumerate(topics)]
        if not requests:
            break
        for (index, _, topic, _), texts in zip(requests, writer.candidates(requests, attempt)):
            k = index - first_index
            for text in texts:  # the first valid, new sample fills this slot
                query, reason = clean_query(text)
                if query is None:
                    rejected[reason] += 1
                elif normalize(query) in seen[k]:
                    rejected["duplicate"] += 1
                else:
                    seen[k].add(normalize(query))
                    accepted[k].append((topic, query))
                    break
    rows = [{"user_id": p.user_id, "topic": topic, "query": query}
            for p, items in zip(profiles, accepted) for topic, query in items]
    return rows, rejected


def build_dataset(config: RunConfig, out: str | Path, progress: bool = True, lm=None
                  ) -> BuildResult:
    """Write OUT/profiles.parquet and OUT/queries.parquet (and OUT/manifest.json)."""
    out = Path(out)
    with open_run_folder(out, "data") as folder:
        result = _build(config, out, progress, lm, folder)
        folder.finished()
    return result


def build_just_enough(config: RunConfig, out: str | Path, need: float, *, spare: int = 0,
                      progress: bool = False) -> Path:
    """A build in `out` sized for a run instead of `data.profiles`: `need` is the run's queries
    in profiles' worth (fractional; the caller divides by queries_per_profile and its split's
    share), rounded up, plus `spare`; at least 2 profiles, at most `data.profiles`. A finished
    build with the same settings is reused (`build_dataset`)."""
    profiles = min(config.data.profiles, max(2, math.ceil(need) + spare))
    build_dataset(config.with_overrides([f"data.profiles={profiles}"]), out, progress=progress)
    return Path(out)


def _build(config: RunConfig, out: Path, progress: bool, lm, folder) -> BuildResult:
    start = time.time()
    settings = _build_settings(config)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file() and (out / "queries.parquet").is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings:
            c = manifest["counts"]
            return BuildResult(out, c["profiles"], c["queries"], c["short_profiles"],
                               c["rejected"], 0.0, reused=True)
    parts = out / ".parts"
    parts.mkdir(parents=True, exist_ok=True)
    settings_file = parts / "settings.json"
    part_settings = {**settings, "profiles_per_part": PROFILES_PER_PART}
    if settings_file.is_file() and json.loads(settings_file.read_text()) != part_settings:
        raise ValueError(f"{parts} holds a partial build with other settings; delete that folder "
                         "or use another --out")
    write_json(settings_file, part_settings)
    folder.started(settings)

    data = config.data
    catalog = load_catalog(data.catalog)
    profiles = generate_profiles(data.profiles, config.seed, catalog,
                                 uncovered_interest_rate=data.uncovered_interest_rate)
    frame = profiles_to_frame(profiles)
    frame["split"] = split_profiles(len(profiles), data.test_fraction, config.seed)

    if data.query_writer == "template":
        writer = TemplateQueryWriter(config.seed)
    else:
        if lm is None:
            from llmauction_sim.lm.registry import load_language_model

            lm = load_language_model(config.user_llm, seed=config.seed, run_config=config)
        writer = LLMQueryWriter(lm, config.user_sampling, config.seed)

    rejected: Counter = Counter()
    bar = tqdm(total=len(profiles), desc="writing queries", unit="profile", disable=not progress)
    for first in range(0, len(profiles), PROFILES_PER_PART):
        part = parts / f"queries-{first:06d}.parquet"
        chunk = profiles[first:first + PROFILES_PER_PART]
        if not part.is_file():
            rows, rej = write_queries_for(writer, chunk, first, data.queries_per_profile,
                                          data.max_attempts)
            tmp = temp_path(part)
            pd.DataFrame(rows, columns=["user_id", "topic", "query"]).to_parquet(tmp)
            os.replace(tmp, part)
            (parts / f"rejected-{first:06d}.json").write_text(json.dumps(rej))
        rejected.update(json.loads((parts / f"rejected-{first:06d}.json").read_text()))
        bar.update(len(chunk))
    bar.close()

    queries = pd.concat([pd.read_parquet(parts / f"queries-{f:06d}.parquet")
                         for f in range(0, len(profiles), PROFILES_PER_PART)], ignore_index=True)
    queries = queries.merge(frame[["user_id", "split"]], on="user_id", how="left")
    queries.insert(0, "query_id", [f"Q-{i:06d}" for i in range(len(queries))])
    queries = queries[["query_id", "user_id", "split", "topic", "query"]]
    per_profile = queries.groupby("user_id").size().reindex(frame["user_id"], fill_value=0)
    short = int((per_profile < data.queries_per_profile).sum())

    _atomic_parquet(frame, out / "profiles.parquet")
    _atomic_parquet(queries, out / "queries.parquet")
    seconds = time.time() - start
    counts = {"profiles": len(frame), "queries": len(queries), "short_profiles": short,
              "rejected": dict(rejected),
              "train_queries": int((queries["split"] == "train").sum()),
              "test_queries": int((queries["split"] == "test").sum())}
    write_json(manifest_path, {"settings": settings, "counts": counts, "seconds": seconds,
                               "writer": writer.name, **environment()})
    for f in parts.iterdir():
        f.unlink()
    parts.rmdir()
    return BuildResult(out, len(frame), len(queries), short, dict(rejected), seconds)


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    tmp = temp_path(path)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


QUERY_COLUMNS = ("query_id", "user_id", "split", "query")
PROFILE_COLUMNS = ("user_id", "age_band", "occupation", "region", "budget_sensitivity",
                   "interests")


def load_dataset(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(profiles, queries) from a `data build` folder, with a one-line error naming the file and
    the fix if it is not one (missing files or columns, wrongly typed interests or splits)."""
    folder = Path(folder)
    missing = [n for n in ("profiles.parquet", "queries.parquet") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a data folder (missing {', '.join(missing)}); "
                                f"create one with `llmauction data build --out {folder}`")
    fix = f"rebuild it with `llmauction data build --out {folder}`"
    frames = {}
    for name, columns in (("profiles.parquet", PROFILE_COLUMNS),
                          ("queries.parquet", QUERY_COLUMNS)):
        path = folder / name
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{path} is not a readable Parquet table ({reason}); {fix}") \
                from None
        absent = [c for c in columns if c not in frame.columns]
        if absent:
            raise ValueError(f"{path} lacks the column(s) {', '.join(absent)} (a data folder's "
                             f"{name} has {', '.join(columns)}); {fix}")
        frames[name] = frame
    profiles, queries = frames["profiles.parquet"], frames["queries.parquet"]
    for i, value in enumerate(profiles["interests"]):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") \
                or not all(isinstance(x, str) for x in value):
            raise ValueError(f"{folder / 'profiles.parquet'}: 'interests' must hold lists of "
                             f"strings, but row {i} holds {value!r}; {fix}")
    splits = set(queries["split"].unique()) - {"train", "test"}
    if splits:
        raise ValueError(f"{folder / 'queries.parquet'}: 'split' must be train or test, not "
                         f"{sorted(map(str, splits))}; {fix}")
    return profiles, queries
