"""The market in the browser: a Mesa SolaraViz page of `AdMarket` (`llmauction viz`, docs/viz.md).

Mesa convention: model.py (the model), agents.py (its agents), app.py (this page). Serve it with
``llmauction viz`` or ``solara run llmauction_sim/market/app.py``; the page reads its data folder
and base config from ``LLMAUCTION_VIZ_DATA`` / ``LLMAUCTION_VIZ_CONFIG`` (set by ``llmauction
viz``).

Responsiveness: a round takes seconds (one batched Ad-LLM call), and Mesa's Step button calls
``model.step()`` synchronously inside the click handler, so nothing on the page could change while
it runs. `VizMarket.step` therefore only *starts* the round on a worker thread and returns at once;
the page shows a progress bar while ``round_in_progress`` is true and a watcher thread
(`solara.use_thread`) redraws the views when the round is done. Calls to ``step()`` while a round
runs (Play pressing on) do nothing, so Play simply runs one round after another.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import matplotlib
import mesa
import pandas as pd
import solara
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

with warnings.catch_warnings():  # Mesa's own components trip solara's rules-of-hooks check
    warnings.simplefilter("ignore", UserWarning)
    from mesa.visualization import SolaraViz
    from mesa.visualization.utils import force_update, update_counter

from llmauction_sim.config import RunConfig
from llmauction_sim.domain.mentions import validate_response
from llmauction_sim.market.agents import AdvertiserAgent, bid_policy_names
from llmauction_sim.market.model import AdMarket
from llmauction_sim.market.run import NO_AD_NOTE

logger = logging.getLogger(__name__)
TITLE = "llmauction_sim market"
DATA_ENV = "LLMAUCTION_VIZ_DATA"
CONFIG_ENV = "LLMAUCTION_VIZ_CONFIG"
ADVERTISER_COLUMNS = ["ad_id", "title", "value_per_click", "bid", "auctions", "exposures",
                      "clicks", "spend", "value", "roi", "utility"]

# One round at a time per process: a reset during a round leaves the old round to finish alone.
_ROUND_LOCK = threading.Lock()


@dataclass(frozen=True)
class MarketView:
    """What the page shows, replaced as a whole after each round (never read half-written)."""

    rounds: int = 0
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    advertisers: pd.DataFrame = field(default_factory=pd.DataFrame)  # (round, ad) rows, with type
    records: tuple[dict, ...] = ()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"") or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class VizMarket(AdMarket):
    """`AdMarket` built from the page's keyword parameters (what SolaraViz passes on Reset).

    A bad parameter never raises: the model keeps the message in ``error`` (shown on the page,
    with ``error_advice``) and does nothing on ``step()``; so does a round that fails, whose
    traceback also goes to the server's log. Subclasses made by `make_market_class` bind the data
    folder and the base config.
    """

    data_dir: ClassVar[str | None] = None
    base_config: ClassVar[RunConfig] = RunConfig()

    def __init__(self, mechanism: str | None = None, judge: str | None = None,
                 bidding: str | None = None, candidates: Any = None,
                 queries_per_step: Any = None, model_name: str | None = None, seed: Any = None):
        self.error: str | None = None
        self.error_advice = "Change the parameters and press Reset."
        self.round_in_progress = False
        self.round_started: float | None = None
        self.round_number = 0
        self.view = MarketView()
        self.settings = {"mechanism": mechanism, "judge": judge, "bidding": bidding,
                         "candidates": candidates, "queries_per_step": queries_per_step,
                         "model_name": model_name, "seed": seed}
        try:
            config = self.make_config(**self.settings)
            profiles, queries = self.load_data(config)
            super().__init__(config, profiles, queries)
        except Exception as exc:  # noqa: BLE001 - every construction error becomes a message
            if "_user_step" not in self.__dict__:  # failed before mesa.Model.__init__
                mesa.Model.__init__(self)
            self.error = _describe(exc)
            self.running = False
        # Mesa's own step wrapper counts a step on every call; ours counts rounds when they run.
        self.step = self.start_round

    @classmethod
    def make_config(cls, *, mechanism=None, judge=None, bidding=None, candidates=None,
                    queries_per_step=None, model_name=None, seed=None) -> RunConfig:
        overrides = []
        for key, value in (("market.mechanism", mechanism), ("clicks.judge", judge),
                           ("market.bidding", bidding), ("retrieval.num_candidates", candidates),
                           ("market.queries_per_step", queries_per_step),
                           ("ad_llm.name", model_name), ("seed", seed)):
            if value is not None and str(value).strip() != "":
                overrides.append(f"{key}={str(value).strip()}")
        config = cls.base_config.with_overrides(overrides)
        from llmauction_sim.mechanisms import check_mechanism

        check_mechanism(config.market.mechanism)
        return config

    @classmethod
    def load_data(cls, config: RunConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
        from llmauction_sim.data import load_dataset
        from llmauction_sim.market.run import _select_split

        folder = config.market.data or cls.data_dir
        if not folder:
            raise ValueError(f"no data folder: start the page with `llmauction viz` or set "
                             f"{DATA_ENV} to a `llmauction data build` folder")
        profiles, queries = load_dataset(folder)
        return _select_split(profiles, queries, config.market.split, folder)

    # --- rounds on a worker thread -------------------------------------------------------------
    def start_round(self) -> bool:
        """Start one round in the background; False (and nothing happens) if one is running."""
        if self.error is not None or self.round_in_progress:
            return False
        self.round_in_progress = True
        self.round_number = self.steps + 1
        self.round_started = time.monotonic()
        threading.Thread(target=self._run_round, name="market-round", daemon=True).start()
        return True

    def _run_round(self) -> None:
        try:
            with _ROUND_LOCK:
                self.steps += 1
                AdMarket.step(self)
                self.view = self.snapshot()
        except Exception as exc:  # noqa: BLE001 - shown on the page, traceback in the log
            logger.exception("market round %d failed", self.steps)
            self.error = f"round {self.steps} failed: {_describe(exc)}"
            self.error_advice = ("The market stopped; the server's log has the traceback. "
                                 "Reset starts a new market.")
            self.running = False
        finally:
            self.round_in_progress = False

    def run_round(self, timeout: float | None = None) -> None:
        """Start a round and wait for it (scripts and tests)."""
        self.start_round()
        while self.round_in_progress:
            time.sleep(0.05)
            if timeout is not None and time.monotonic() - self.round_started > timeout:
                raise TimeoutError(f"round did not finish within {timeout} s")

    def snapshot(self) -> MarketView:
        metrics = self.datacollector.get_model_vars_dataframe().reset_index(drop=True)
        metrics.index = metrics.index + 1
        metrics.index.name = "round"
        adv = self.datacollector.get_agenttype_vars_dataframe(AdvertiserAgent).reset_index()
        adv = adv.rename(columns={"Step": "round"})
        titles = {ad.id: ad.title for ad in self.catalog}
        adv["title"] = adv["ad_id"].map(titles)
        adv["type"] = adv["ad_id"].map({i: a.policy.name for i, a in self.advertisers.items()})
        return MarketView(self.steps, metrics, adv, tuple(dict(r) for r in self.round_records))


def make_market_class(data_dir: str | os.PathLike | None,
                      base_config: RunConfig | None = None) -> type[VizMarket]:
    """A `VizMarket` subclass bound to a data folder and base config (Reset keeps both)."""
    return type("VizMarket", (VizMarket,), {
        "data_dir": None if data_dir is None else str(data_dir),
        "base_config": base_config if base_config is not None else RunConfig(),
        "__module__": __name__})


def model_params(base: RunConfig) -> dict:
    """The page's inputs, defaulting to the base config's values."""
    from llmauction_sim.clicks import judge_names
    from llmauction_sim.mechanisms import mechanism_names

    return {
        "mechanism": {"type": "Select", "label": "Mechanism", "value": base.market.mechanism,
                      "values": list(mechanism_names())},
        "judge": {"type": "Select", "label": "Click judge", "value": base.clicks.judge,
                  "values": list(judge_names())},
        # A policy for every advertiser or a population with parameters (VM/UM counts, tau).
        "bidding": {"type": "InputText", "value": base.market.bidding,
                    "label": "Advertisers: " + ", ".join(bid_policy_names())
                    + " or a population, e.g. vm:50:tau=1.5,um:50"},
        "candidates": {"type": "InputText", "label": "Candidates K (number or 'all')",
                       "value": str(base.retrieval.num_candidates)},
        "queries_per_step": {"type": "InputText", "label": "Queries per step",
                             "value": str(base.market.queries_per_step)},
        "model_name": {"type": "InputText", "label": "Ad-LLM model",
                       "value": base.ad_llm.name},
        "seed": {"type": "InputText", "label": "Seed", "value": str(base.seed)},
    }


# --------------------------------------------------------------------------------------------------
# views
# --------------------------------------------------------------------------------------------------

CSS = """
.market-answer { white-space: pre-wrap; border-left: 4px solid #90a4ae; padding: 4px 8px;
                 margin: 4px 0 10px 0; background: rgba(144, 164, 174, 0.08); }
.ad-valid { background: #c8e6c9; color: #1b5e20; border-radius: 3px; padding: 0 2px; }
.ad-clicked { background: #1e88e5; color: white; border-radius: 3px; padding: 0 2px;
              font-weight: bold; }
.ad-invalid { background: #ffcdd2; color: #b71c1c; border-radius: 3px; padding: 0 2px;
              text-decoration: wavy underline; }
.market-query { font-weight: bold; }
.no-ad-note { border-left: 4px solid #fb8c00; background: #fff3e0; color: #e65100;
              padding: 4px 8px; margin: 4px 0; }
.market-bids, .market-outcome { font-size: 85%; color: #607d8b; }
.market-scroll { max-height: 370px; overflow-y: auto; }
.market-table { border-collapse: collapse; font-size: 85%; }
.market-table td, .market-table th { border: 1px solid #cfd8dc; padding: 2px 6px; }
.v-tabs { display: none; }  /* Mesa's tab strip: one page, labelled "Page 0" */
"""


def highlight_answer(response: str, candidates: dict[str, str], catalog_ids, clicked) -> str:
    """HTML of `response` with each mention in a span: ad-clicked, ad-valid or ad-invalid."""
    report = validate_response(response, candidates, catalog_ids)
    spans = [(m.start, m.end, "ad-clicked" if m.ad_id in clicked else "ad-valid",
              f"{m.ad_id}: valid") for m in report.valid]
    spans += [(i.start, i.end, "ad-invalid", f"{i.ad_id or 'no id'}: {i.kind.value}")
              for i in report.issues]
    out, pos = [], 0
    for start, end, cls, title in sorted(spans):
        if start < pos:
            continue
        out.append(html.escape(response[pos:start]))
        out.append(f'<span class="{cls}" title="{html.escape(title)}">'
                   f"{html.escape(response[start:end])}</span>")
        pos = end
    out.append(html.escape(response[pos:]))
    return "".join(out)


def conversation_html(model: VizMarket) -> str:
    view = model.view
    titles = {ad.id: ad.title for ad in model.catalog}
    ids = set(titles)
    parts = [f'<div class="market-conversation"><div><b>Round {view.rounds}</b>: '
             f'{len(view.records)} queries</div>']
    if not any(r["exposed"] for r in view.records):
        parts.append(f'<div class="no-ad-note">In this round {html.escape(NO_AD_NOTE)}.</div>')
    for r in view.records:
        bids = r["bids"]
        clicked = set(r["clicked"])
        cands = {i: titles.get(i, i) for i in r["candidates"]}
        bid_text = ", ".join(
            f"{html.escape(i)} <i>{html.escape(cands[i])}</i> bid {bids.get(i, math.nan):g}"
            for i in sorted(cands, key=lambda i: -bids.get(i, 0)))
        parts.append(
            f'<div class="market-turn"><div class="market-query">{html.escape(r["user_id"])}: '
            f'{html.escape(r["query"])}</div>'
            f'<div class="market-bids">candidates and bids: {bid_text}</div>'
            f'<div class="market-answer answer">'
            f'{highlight_answer(r["response"], cands, ids, clicked)}</div>'
            f'<div class="market-outcome">exposed: {", ".join(r["exposed"]) or "none"}; '
            f'clicked: {", ".join(r["clicked"]) or "none"}; revenue {r["revenue"]:g}; '
            f'format errors {r["format_errors"]}</div></div>')
    parts.append("</div>")
    return "".join(parts)


@solara.component
def StatusView(model: VizMarket):
    """Errors, the running round's progress bar, and the watcher that redraws when it ends."""
    update_counter.get()
    busy = model.round_in_progress

    def wait_for_round():
        if not busy:
            return
        while model.round_in_progress:
            time.sleep(0.2)
        force_update()

    solara.use_thread(wait_for_round, dependencies=[model, busy, model.steps])
    solara.Style(CSS)
    with solara.Column(classes=["market-status"]):
        if model.error:
            solara.Error(model.error, classes=["market-error"])
            solara.Text(model.error_advice)
        if busy:
            n, k = model.config.market.queries_per_step, model.round_number
            # Mesa's sidebar "Step: k" counts rounds started: name it here so the counts agree.
            solara.Text(f"Round {k} in progress (Step {k}): answering {n} queries in one batched "
                        "Ad-LLM call, then judging clicks...", classes=["round-progress"])
            solara.ProgressLinear(True)
        if not model.error:
            running = f" (round {model.round_number} running)" if busy else ""
            solara.Text(f"Rounds completed: {model.view.rounds}{running}",
                        classes=["rounds-completed"])
            cfg = model.config
            solara.Text(f"{cfg.market.mechanism} on {cfg.ad_llm.name}, judge {cfg.clicks.judge}, "
                        f"bids {cfg.market.bidding}, K={cfg.retrieval.num_candidates}, "
                        f"{cfg.market.queries_per_step} queries/round, seed {cfg.seed}; "
                        f"{len(model.users)} users, {len(model.catalog)} ads")


def _round_axis(ax, view: MarketView) -> None:
    ax.set_xlim(0.5, max(view.rounds, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("round")


def _metrics_figure(view: MarketView) -> Figure:
    fig = Figure(figsize=(6.2, 3.6), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    for ax, (col, label) in zip(axes, [("revenue_per_query", "revenue / query"), ("ctr", "CTR"),
                                       ("format_error_rate", "format-error rate")]):
        if not view.metrics.empty:
            ax.plot(view.metrics.index, view.metrics[col], marker="o")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if view.metrics.empty or view.metrics["ctr"].isna().all():
        axes[1].text(0.5, 0.5, "no ads exposed yet: CTR is undefined", ha="center",
                     va="center", transform=axes[1].transAxes, color="gray")
    _round_axis(axes[-1], view)
    return fig


def _advertiser_figure(view: MarketView) -> Figure:
    """Mean bid and ROI per advertiser type (bid policy) over rounds, among the advertisers that
    took part: one labelled line per type rather than one per ad."""
    fig = Figure(figsize=(6.2, 3.6), layout="constrained")
    ax_bid, ax_roi = fig.subplots(2, 1, sharex=True)
    adv = view.advertisers
    joined = adv[adv["auctions"] > 0] if not adv.empty else adv
    for kind, rows in (joined.groupby("type") if not joined.empty else []):
        per_round = rows.groupby("round")
        ads = rows.loc[rows["round"] == rows["round"].max(), "ad_id"].nunique()
        label = f"{kind} ({ads} ads)"
        line, = ax_bid.plot(per_round["bid"].mean(), marker=".", label=label)
        low, high = per_round["bid"].min(), per_round["bid"].max()
        ax_bid.fill_between(low.index, low, high, color=line.get_color(), alpha=0.15)
        ax_roi.plot(per_round["roi"].mean(), marker=".", color=line.get_color())
    if not joined.empty:
        ax_bid.legend(fontsize=7)
    if joined.empty or joined["roi"].isna().all():
        ax_roi.text(0.5, 0.5, "no spend yet (ROI undefined)", ha="center", va="center",
                    transform=ax_roi.transAxes, color="gray")
    ax_bid.set_ylabel("bid: mean, range")
    ax_roi.set_ylabel("mean ROI")
    for ax in (ax_bid, ax_roi):
        ax.grid(alpha=0.3)
    _round_axis(ax_roi, view)
    return fig


def _small(make, view: MarketView) -> Figure:
    with matplotlib.rc_context({"font.size": 8}):
        return make(view)


@solara.component
def MetricsPlot(model: VizMarket):
    """Revenue per query, CTR and format-error rate over rounds."""
    update_counter.get()
    view = model.view
    fig = solara.use_memo(lambda: _small(_metrics_figure, view), [id(model), view.rounds])
    solara.FigureMatplotlib(fig, dependencies=[id(model), view.rounds], format="png")


@solara.component
def AdvertiserPlot(model: VizMarket):
    """Bid and ROI per advertiser type over rounds."""
    update_counter.get()
    view = model.view
    fig = solara.use_memo(lambda: _small(_advertiser_figure, view), [id(model), view.rounds])
    solara.FigureMatplotlib(fig, dependencies=[id(model), view.rounds], format="png")


@solara.component
def AdvertiserTable(model: VizMarket):
    """Latest totals of the advertisers that took part."""
    update_counter.get()
    adv = model.view.advertisers
    if adv.empty:
        solara.Text("Advertisers appear here after the first round.")
        return
    latest = adv[(adv["round"] == adv["round"].max()) & (adv["auctions"] > 0)]
    table = latest[ADVERTISER_COLUMNS].sort_values(["spend", "auctions"], ascending=False)
    solara.HTML(tag="div", classes=["market-scroll"], unsafe_innerHTML=table.to_html(
        index=False, classes="market-table advertiser-table", float_format=lambda v: f"{v:.2f}",
        na_rep="-"))


@solara.component
def ConversationView(model: VizMarket):
    """The latest round's queries and answers; ad mentions highlighted, bids alongside."""
    update_counter.get()
    if model.error is not None and not model.view.records:
        solara.Text("No market (see the error).")
        return
    if not model.view.records:
        solara.Text("Press Step to run a round: the users' queries and the Ad-LLM's answers "
                    "appear here.")
        return
    solara.HTML(tag="div", classes=["market-scroll"], unsafe_innerHTML=conversation_html(model))


COMPONENTS = [(StatusView, 0), (ConversationView, 0), (MetricsPlot, 0), (AdvertiserPlot, 0),
              (AdvertiserTable, 0)]


def _market_class_from_env() -> type[VizMarket]:
    raw = os.environ.get(CONFIG_ENV)
    base = RunConfig.from_dict(json.loads(raw)) if raw else RunConfig()
    return make_market_class(os.environ.get(DATA_ENV), base)


Market = _market_class_from_env()


@solara.component
def Page():
    params = model_params(Market.base_config)
    model = solara.use_memo(lambda: Market(**{k: v["value"] for k, v in params.items()}), [])
    solara.Title(TITLE)  # the browser tab's title
    SolaraViz(model, components=COMPONENTS, model_params=params, name=TITLE, play_interval=500)


# --------------------------------------------------------------------------------------------------
# serving
# --------------------------------------------------------------------------------------------------

def default_data(config: RunConfig, progress: bool = True) -> Path:
    """A small User-LLM-written data build in the cache folder, built once."""
    from llmauction_sim.data import build_dataset
    from llmauction_sim.paths import cache_dir

    out = cache_dir() / "viz-data"
    if not (out / "queries.parquet").is_file():
        build_dataset(config.with_overrides(["data.profiles=8"]), out, progress=progress)
    return out


def serve(config: RunConfig, host: str = "127.0.0.1", port: int = 8765,
          data: str | os.PathLike | None = None) -> None:
    """Replace this process with ``solara run app.py --production`` (offline)."""
    folder = Path(data) if data is not None else default_data(config)
    from llmauction_sim.data import load_dataset

    load_dataset(folder)  # a clear error now rather than on the page
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               **{DATA_ENV: str(folder.resolve()), CONFIG_ENV: json.dumps(config.to_dict())})
    argv = [sys.executable, "-m", "solara", "run", __file__, "--host", host, "--port", str(port),
            "--production"]
    print(f"serving the market page on http://{host}:{port} (data {folder})", flush=True)
    os.execve(sys.executable, argv, env)
