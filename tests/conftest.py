"""Shared fixtures: one torch thread for the whole session, and the packaged catalog and encoder."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from llmauction_sim.domain.catalog import Catalog, load_catalog
from llmauction_sim.domain.users import UserProfile


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Small matrices gain nothing from threads, and spinning threads slow a shared CPU a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def packaged_catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def text_encoder():
    """The packaged MiniLM encoder, loaded once (`load_encoder` also keeps it per process)."""
    from llmauction_sim.lm.encoder import load_encoder

    return load_encoder()


def make_profile(*interests: str, user_id: str = "U-00001", occupation: str = "nurse",
                 region: str = "Lisbon, Portugal", age_band: str = "25-34",
                 budget_sensitivity: str = "medium") -> UserProfile:
    """A hand-made profile for tests that need control over the interests."""
    return UserProfile(user_id=user_id, age_band=age_band, occupation=occupation, region=region,
                       budget_sensitivity=budget_sensitivity, interests=tuple(interests))


@pytest.fixture
def profile_factory():
    return make_profile


def cpu_seconds(work: Callable[[], object], repeats: int = 3) -> float:
    """Least process CPU time of `repeats` calls: other processes' load does not count."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return best


def assert_near_linear(small: Callable[[], object], large: Callable[[], object], size_ratio: float,
                       slack: float = 3.0) -> None:
    """`large` (an input `size_ratio` times bigger) costs at most `slack` x linear growth: a
    quadratic algorithm exceeds that by far for the ratios used here, and timing noise does not
    reach it. Times are CPU times, measured in the same run."""
    ratio = cpu_seconds(large) / max(cpu_seconds(small), 1e-4)
    assert ratio < slack * size_ratio, f"cost grew {ratio:.1f}x for a {size_ratio}x larger input"
