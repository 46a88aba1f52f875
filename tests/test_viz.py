"""The market page (`llmauction viz`) in a real browser: Step shows progress, then an answer and
updated plots; a bad parameter shows an error message and the page stays usable. Plus the
highlighting of ad mentions, the figures, and the page's model without a browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("solara", reason="the viz extra (solara) is not installed")
pytest.importorskip("altair", reason="Mesa's visualization needs altair (viz extra)")

from llmauction_sim.config import RunConfig  # noqa: E402
from llmauction_sim.data import build_dataset  # noqa: E402
from llmauction_sim.market.app import (  # noqa: E402
    TITLE,
    MarketView,
    _advertiser_figure,
    _metrics_figure,
    highlight_answer,
    make_market_class,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SETTINGS = ["ad_sampling.max_new_tokens=24", "market.queries_per_step=2"]
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("viz") / "data"
    build_dataset(RunConfig().with_overrides(["data.profiles=4", "data.query_writer=template"]),
                  folder, progress=False)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_highlight_distinguishes_valid_invalid_and_clicked() -> None:
    cands = {"Ad-0001": "Acme Shoes", "Ad-0002": "Blue Bikes"}
    text = ("Try @Acme Shoes@[Ad-0001] or @Blue Bikes@[Ad-0002], not @Acme Shoe@[Ad-0001] "
            "or @Nope@[Ad-9999] <b>")
    out = highlight_answer(text, cands, set(cands), clicked={"Ad-0002"})
    assert '<span class="ad-valid" title="Ad-0001: valid">@Acme Shoes@[Ad-0001]</span>' in out
    assert '<span class="ad-clicked" title="Ad-0002: valid">@Blue Bikes@[Ad-0002]</span>' in out
    assert out.count('class="ad-invalid"') == 2
    assert "title_mismatch" in out and "unknown_id" in out
    assert "&lt;b&gt;" in out and "<b>" not in out  # the answer's text is escaped
    assert highlight_answer("no ads here", cands, set(cands), set()) == "no ads here"


def test_bad_parameters_become_messages_not_exceptions(data_dir: Path) -> None:
    market_cls = make_market_class(data_dir, RunConfig().with_overrides(SETTINGS))
    for params, words in [({"model_name": "no-such-model"}, "no-such-model"),
                          ({"candidates": "999"}, "larger than the catalog"),
                          ({"queries_per_step": "0"}, "queries_per_step"),
                          ({"mechanism": "nope"}, "unknown mechanism")]:
        market = market_cls(**params)
        assert market.error is not None and words in market.error, (params, market.error)
        assert market.start_round() is False and market.steps == 0
    assert "no data folder" in make_market_class(None)().error
    # Reset keeps the bound data folder and base config (SolaraViz calls model.__class__(...)).
    market = type(market)(queries_per_step="1")
    assert market.error is None and market.config.ad_sampling.max_new_tokens == 24


def _view(rounds: int, ads: int = 25, ctr: float = np.nan) -> MarketView:
    """A page snapshot of `rounds` rounds with `ads` advertisers of two types."""
    metrics = pd.DataFrame({"revenue_per_query": 0.0, "ctr": ctr, "format_error_rate": 0.0},
                           index=pd.RangeIndex(1, rounds + 1, name="round"))
    rng = np.random.default_rng(0)
    adv = pd.DataFrame([{"round": t, "ad_id": f"Ad-{i:04d}", "bid": float(rng.integers(1, 101)),
                         "auctions": t, "roi": np.nan,
                         "type": "value_maximizer" if i % 2 else "utility_maximizer"}
                        for t in range(1, rounds + 1) for i in range(ads)])
    return MarketView(rounds, metrics, adv)


def test_figures_label_a_few_lines_and_say_why_a_plot_is_empty() -> None:
    view = _view(3)
    bids, roi = _advertiser_figure(view).axes
    labels = [t.get_text() for t in bids.get_legend().get_texts()]
    assert sorted(labels) == ["utility_maximizer (13 ads)", "value_maximizer (12 ads)"]
    assert len(bids.lines) == 2  # one mean line per advertiser type, not one per ad
    assert any("ROI undefined" in t.get_text() for t in roi.texts)
    ctr = _metrics_figure(view).axes[1]
    assert any("CTR is undefined" in t.get_text() for t in ctr.texts)
    assert not _metrics_figure(_view(3, ctr=0.25)).axes[1].texts
    assert any("CTR is undefined" in t.get_text() for t in _metrics_figure(MarketView()).axes[1].texts)


def test_a_failed_round_shows_its_error_and_logs_the_traceback(data_dir: Path, monkeypatch,
                                                              caplog) -> None:
    market = make_market_class(data_dir, RunConfig().with_overrides(SETTINGS))()
    assert market.error is None

    def broken(requests, rng):
        raise RuntimeError("the Ad-LLM ran out of memory")

    monkeypatch.setattr(market.auctioneer, "allocate", broken)
    with caplog.at_level("ERROR", logger="llmauction_sim.market.app"):
        market.run_round(timeout=120)
    assert market.error == "round 1 failed: RuntimeError: the Ad-LLM ran out of memory"
    assert "traceback" in market.error_advice and "parameters" not in market.error_advice
    record = next(r for r in caplog.records if r.name == "llmauction_sim.market.app")
    assert record.exc_info and "ran out of memory" in caplog.text and "Traceback" in caplog.text
    assert market.start_round() is False  # the market stays stopped


@pytest.fixture(scope="module")
def server(data_dir: Path):
    port = _free_port()
    cmd = [sys.executable, "-m", "llmauction_sim.cli", "viz", "--port", str(port), "--data",
           str(data_dir)]
    for setting in SETTINGS:
        cmd += ["--set", setting]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"`llmauction viz` did not serve {url}:\n{proc.stdout.read()}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright (python) is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium executable on PATH (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        yield browser
        browser.close()


def test_step_shows_progress_then_answers_and_plots(server: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 1400})
    page.goto(server)
    page.get_by_text("Rounds completed: 0").wait_for(timeout=90_000)
    assert page.title() == TITLE
    assert not page.get_by_text("Page 0").is_visible()  # Mesa's one-tab strip is hidden
    assert page.locator(".answer").count() == 0
    page.get_by_role("button", name="Step").click()
    # The step runs on a worker thread: the page shows progress while the round runs, and
    # says which of Mesa's steps it is, so the sidebar's "Step: 1" agrees with it.
    page.locator(".round-progress").wait_for(timeout=15_000)
    assert "Round 1 in progress (Step 1)" in page.locator(".round-progress").inner_text()
    assert "round 1 running" in page.locator(".rounds-completed").inner_text()
    page.get_by_text("Rounds completed: 1").wait_for(timeout=120_000)
    answers = page.locator(".answer")
    answers.first.wait_for(timeout=10_000)
    assert answers.count() == 2  # one answer block per query of the round
    assert page.locator(".market-query").count() == 2
    assert "bid" in page.locator(".market-bids").first.inner_text()
    assert page.locator(".advertiser-table tbody tr").count() >= 1
    assert page.locator(".round-progress").count() == 0
    assert page.locator("img").count() >= 2  # the two matplotlib figures
    outcomes = page.locator(".market-outcome").all_inner_texts()
    if all(text.startswith("exposed: none") for text in outcomes):  # the page says why
        assert "inserted no valid ad" in page.locator(".no-ad-note").inner_text()
    else:
        assert page.locator(".no-ad-note").count() == 0
    page.wait_for_timeout(500)
    shot = tmp_path / "viz.png"
    page.screenshot(path=str(shot), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "viz.png")
    page.close()


def test_bad_input_shows_an_error_and_the_page_recovers(server: str, browser,
                                                        tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 1200})
    page.goto(server)
    page.get_by_text("Rounds completed: 0").wait_for(timeout=90_000)
    name = page.get_by_label("Ad-LLM model")
    name.fill("no-such-model")
    name.press("Enter")
    page.get_by_role("button", name="Reset").click()
    error = page.locator(".market-error")
    error.wait_for(timeout=30_000)
    assert "no-such-model" in error.inner_text()
    page.screenshot(path=str(tmp_path / "viz-error.png"), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "viz-error.png", ARTIFACTS / "viz-error.png")
    # Still usable: fix the input, Reset, and the market is back.
    name.fill("smollm2-135m-instruct")
    name.press("Enter")
    page.get_by_role("button", name="Reset").click()
    page.get_by_text("Rounds completed: 0").wait_for(timeout=30_000)
    assert page.locator(".market-error").count() == 0
    page.close()
