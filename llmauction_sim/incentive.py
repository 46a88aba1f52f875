"""Incentive compatibility of first price per click for value maximizers: the search for a better bid.

A value maximizer (VM) with value v per click and target ROI tau gets x(b) expected clicks (its
ITCTR) when it bids b, and pays b per click. Its ROI constraint has two forms:

- **per auction** (the paper's Thm 4.5): ``v x(b) >= tau b x(b)`` in every auction it can win,
  i.e. ``b <= v / tau``. The best bid maximizes x over ``[0, v / tau]``; the gain from deviating,
  ``max_{b <= v/tau} x(b) - x(v/tau) >= 0``, is zero in every auction exactly when x does not fall
  as the bid rises to v / tau. The theorem's premise, monotonicity, is what this form tests.
- **aggregate**: ``sum_a v_a x_a(b_a) >= tau sum_a b_a x_a(b_a)`` over all the VM's auctions (how
  advertisers budget in practice). Its best plan maximizes, with a multiplier w in [0, 1],
  ``v x(b) - w tau b x(b)`` in each decision unit (one auction, or all auctions of a value bin),
  with the smallest w whose plan meets the target (the Lagrangian: the surplus
  ``sum (v x - tau b x)`` of the maximizing plan does not decrease in w, so w is found by
  bisection). Each unit then bids like a utility maximizer with the inflated value
  ``v / (w tau)``, which is v / tau only when that best response is linear in the value.

Decision units are menus: for unit k and candidate g, ``value[k, g] = sum v x`` and
``spend[k, g] = sum b x`` over the unit's auctions. Column 0 is always the truthful bid v / tau,
so argmax ties keep it and a deviation counts only where it is strictly better.

Pure numpy; every random draw comes from the Generator passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from llmauction_sim.classic.auctions import counterfactual_outcomes
from llmauction_sim.classic.bidding import ValueConfig, ValueSampler
from llmauction_sim.statistics import Interval, bootstrap

# --------------------------------------------------------------------------------------------------
# best responses on menus
# --------------------------------------------------------------------------------------------------


def best_feasible(value: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Per unit, the feasible column of highest value (column 0, the truthful bid, on ties)."""
    value = np.asarray(value, np.float64)
    masked = np.where(feasible, value, -np.inf)
    masked[:, 0] = value[:, 0]  # the truthful bid always meets the per-auction constraint
    return masked.argmax(axis=1)


def plan_totals(value: np.ndarray, spend: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """Total value and spend of the plan that takes column choice[k] in unit k."""
    rows = np.arange(len(choice))
    return float(value[rows, choice].sum()), float(spend[rows, choice].sum())


def lagrangian_plan(value: np.ndarray, spend: np.ndarray, tau: float, iters: int = 60
                    ) -> tuple[np.ndarray, float]:
    """The value-maximizing plan under the aggregate constraint sum value >= tau sum spend.

    Returns (choice per unit, w): the plan maximizing ``value - w tau spend`` per unit with the
    smallest w in [0, 1] that meets the constraint. Exact for a continuum of units (the
    constraint's Lagrangian); with few units a plan can leave some slack at the jump in w.
    """
    value, spend = np.asarray(value, np.float64), np.asarray(spend, np.float64)
    scale = max(float(np.abs(value).sum()), 1e-300)

    def plan(w: float) -> np.ndarray:
        return (value - w * tau * spend).argmax(axis=1)

    def surplus(choice: np.ndarray) -> float:
        v, s = plan_totals(value, spend, choice)
        return v - tau * s

    tol = -1e-12 * scale
    if surplus(plan(0.0)) >= tol:
        return plan(0.0), 0.0
    if surplus(plan(1.0)) < tol:  # nothing beats the truthful plan's slack
        return np.zeros(len(value), dtype=np.int64), 1.0
    low, high = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (low + high)
        low, high = (low, mid) if surplus(plan(mid)) >= tol else (mid, high)
    return plan(high), high


# --------------------------------------------------------------------------------------------------
# parametric deviations and their search
# --------------------------------------------------------------------------------------------------


def capped_shape(v: np.ndarray, params: np.ndarray) -> np.ndarray:
    """min(v, k) per parameter row (k,): the shape of the capped bid min(c v, c k)."""
    return np.minimum(v[None, :], np.atleast_2d(params)[:, :1])


def uniform_factor(v: np.ndarray, params: np.ndarray) -> np.ndarray:
    """b = m v per parameter row (m,): [C, V]."""
    return np.atleast_2d(params)[:, :1] * v[None, :]


def piecewise_linear(knots: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """b(v) linear between the bids (parameters) at the given value knots, flat beyond them."""
    knots = np.asarray(knots, np.float64)

    def bids(v: np.ndarray, params: np.ndarray) -> np.ndarray:
        params = np.atleast_2d(params)
        return np.stack([np.interp(v, knots, p) for p in params])
    return bids


def maximize(objective: Callable[[np.ndarray], np.ndarray], low: Sequence[float],
             high: Sequence[float], rng: np.random.Generator, *, samples: int = 1000,
             starts: Sequence[Sequence[float]] = (), batch: int = 256,
             min_step: float = 1e-4, max_rounds: int = 500) -> tuple[np.ndarray, float]:
    """Random search in the box [low, high], then coordinate refinement from the best point.

    `objective` maps parameter rows [C, P] to scores [C] (use -inf or a large negative score
    for infeasible points). Each refinement round tries +-step on every coordinate, moves to
    the best improving trial, and halves the steps when none improves, down to `min_step`
    times the box width. `starts` (e.g. the truthful bid) are always evaluated.
    """
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    width = high - low
    points = low + width * rng.random((samples, low.size))
    if len(starts):
        points = np.vstack([np.asarray(starts, np.float64).reshape(-1, low.size), points])
    scores = np.concatenate([objective(points[i:i + batch]) for i in range(0, len(points), batch)])
    best, score = points[int(scores.argmax())].copy(), float(scores.max())
    step = 0.1 * width
    eye = np.eye(low.size)
    for _ in range(max_rounds):
        if np.all(step <= min_step * width):
            break
        trials = np.clip(np.vstack([best + eye * step, best - eye * step]), low, high)
        trial_scores = objective(trials)
        j = int(trial_scores.argmax())
        if trial_scores[j] > score:
            best, score = trials[j].copy(), float(trial_scores[j])
        else:
            step = step / 2
    return best, score


def projected_value(bid_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], values: np.ndarray,
                    win: Callable[[np.ndarray], np.ndarray], tau: float, params: np.ndarray,
                    scale_max: float = 5.0, iters: int = 40, bid_cap: float = np.inf
                    ) -> tuple[np.ndarray, np.ndarray]:
    """For each parameter row, the largest scale k <= scale_max at which the bid function
    min(k b(v), bid_cap) meets E[v x] >= tau E[b x] over `values` (equally weighted), found by
    bisection (the ROI falls as the bids rise), and the value E[v x] there: ([C] values, [C]
    scales). `win` maps bids [C, V] (one per value) to expected clicks [C, V].

    Projecting onto the constraint this way leaves the search a free problem in the shape."""
    base = bid_fn(values, params)

    def totals(k):
        b = np.minimum(k[:, None] * base, bid_cap)
        x = win(b)
        return (x * values[None, :]).mean(axis=1), (x * b).mean(axis=1)

    def ok(k):
        value, spend = totals(k)
        return value >= tau * spend * (1.0 - 1e-12)

    low, high = np.zeros(len(base)), np.full(len(base), scale_max)
    top = ok(high)
    for _ in range(iters):
        mid = 0.5 * (low + high)
        good = ok(mid)
        low, high = np.where(good, mid, low), np.where(good, high, mid)
    scale = np.where(top, scale_max, low)
    return totals(scale)[0], scale


def search_shape(bid_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], values: np.ndarray,
                 win: Callable[[np.ndarray], np.ndarray], tau: float, low: Sequence[float],
                 high: Sequence[float], rng: np.random.Generator, *,
                 starts: Sequence[Sequence[float]] = (), samples: int = 500,
                 bid_cap: float = np.inf) -> tuple[np.ndarray, float, float]:
    """The best shape parameters of a bid family under the aggregate constraint (`maximize`
    over the shape, each point scaled onto the constraint by `projected_value`): (params,
    scale, value)."""
    def score(p):
        return projected_value(bid_fn, values, win, tau, p, bid_cap=bid_cap)[0]

    best, value = maximize(score, low, high, rng, samples=samples, starts=starts)
    scale = projected_value(bid_fn, values, win, tau, best[None, :], bid_cap=bid_cap)[1][0]
    return best, float(scale), value


# --------------------------------------------------------------------------------------------------
# a closed-form case: symmetric first price against opponents with uniform values
# --------------------------------------------------------------------------------------------------


def power_win(s: float, n: int) -> Callable[[np.ndarray], np.ndarray]:
    """Win probability of bid b against n opponents bidding s u, u ~ U[0, 1]: min(b/s, 1)^n."""
    return lambda b: np.clip(np.asarray(b, np.float64) / s, 0.0, 1.0) ** n


def capped_totals(c: float, s: float, n: int) -> tuple[float, float]:
    """E[v x] and E[b x] of b = min(c v, s), v ~ U[0, 1], against `power_win(s, n)`."""
    r = s / c
    if r >= 1.0:  # the cap never binds: b = c v
        value = (c / s) ** n / (n + 2)
        return value, c * value
    return 0.5 - r * r * n / (2 * (n + 2)), s * (1.0 - r * (n + 1) / (n + 2))


def capped_linear_optimum(s: float, n: int, tau: float) -> tuple[float, float, float]:
    """The VM's best bid function under the aggregate constraint in the closed-form case.

    The Lagrangian best response to min(b/s, 1)^n is b = min(c v, s): linear below the highest
    opposing bid s, because b^n (v' - b) peaks at b = n v' / (n + 1). The ROI of b = c v is 1/c,
    so while 1/tau <= s the truthful v/tau is optimal; above, c solves ROI(c) = tau.
    Returns (c, value, value of the truthful bid v / tau).
    """
    truthful = capped_totals(1.0 / tau, s, n)[0]
    if 1.0 / tau <= s:
        return 1.0 / tau, truthful, truthful
    if 0.5 / s >= tau:  # bidding s always meets the target: win every auction
        return np.inf, 0.5, truthful
    low, high = s, 1e6
    for _ in range(200):  # ROI(c) falls from 1/s at c = s to 1/(2s) as c grows
        mid = np.sqrt(low * high)
        value, spend = capped_totals(mid, s, n)
        low, high = (mid, high) if value >= tau * spend else (low, mid)
    return low, capped_totals(low, s, n)[0], truthful


# --------------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------------


def paired_gain(deviation: np.ndarray, truthful: np.ndarray, z: float = 1.96
                ) -> dict[str, float]:
    """Mean paired gain per auction (deviation - truthful objective) with a normal interval, and
    the gain relative to the truthful mean (delta method), from independent paired auctions."""
    d = np.asarray(deviation, np.float64) - np.asarray(truthful, np.float64)
    t = np.asarray(truthful, np.float64)
    n = d.size
    gain, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n))
    out = {"gain": gain, "gain_low": gain - z * se, "gain_high": gain + z * se}
    base = float(t.mean())
    if base > 0:
        rel = gain / base
        rel_se = float(((d - rel * t) / base).std(ddof=1) / np.sqrt(n))
        out.update(relative=rel, relative_low=rel - z * rel_se, relative_high=rel + z * rel_se)
    else:
        out.update(relative=np.nan, relative_low=np.nan, relative_high=np.nan)
    return out


def ratio_normal(num: np.ndarray, den: np.ndarray, z: float = 1.96) -> Interval:
    """sum(num) / sum(den) over independent auctions with a delta-method normal interval."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if den.sum() <= 0:
        return Interval(np.nan, np.nan, np.nan)
    r = float(num.sum() / den.sum())
    se = float(((num - r * den) / den.mean()).std(ddof=1) / np.sqrt(num.size))
    return Interval(r, r - z * se, r + z * se)


def clustered_ratio(num: np.ndarray, den: np.ndarray, clusters: np.ndarray,
                    rng: np.random.Generator, samples: int = 2000) -> Interval:
    """sum(num) / sum(den) with a cluster-bootstrap interval (clusters: e.g. the query)."""
    _, inverse = np.unique(clusters, return_inverse=True)
    cn = np.bincount(inverse, weights=num)
    cd = np.bincount(inverse, weights=den)

    def stat(i):
        d = cd[i].sum()
        return cn[i].sum() / d if d > 0 else np.nan
    return bootstrap(stat, cn.size, rng, samples=samples)


# Student t 0.975 quantiles for 1..30 degrees of freedom (1.96 beyond).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def cluster_ratio_t(num: np.ndarray, den: np.ndarray) -> Interval:
    """sum(num) / sum(den) over a few independent clusters (one value each) with a delta-method
    Student-t interval: with under ~20 clusters a percentile bootstrap is too narrow."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    n = num.size
    if n < 2 or den.sum() <= 0:
        return Interval(np.nan, np.nan, np.nan)
    r = float(num.sum() / den.sum())
    se = float(((num - r * den) / den.mean()).std(ddof=1) / np.sqrt(n))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return Interval(r, r - t * se, r + t * se)


# --------------------------------------------------------------------------------------------------
# the tilted decoder's allocation, from pi_0's choice probabilities
# --------------------------------------------------------------------------------------------------


def tilt_rows(frame: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """One row per (auction, permutation, focal candidate) of a choice probe with a `pctr`
    column, with ``log_rest = log sum_{j != i} q_j exp(b_j pCTR_j / T)`` over the others.

    The tilt's choice is P(i) = q_i e^{u_i/T} / sum_j q_j e^{u_j/T}, u_j = b_j pCTR_j - lambda c_k;
    the penalty term is the same for every candidate of a mention and cancels.
    """
    frame = frame.sort_values(["auction", "permutation", "position"]).reset_index(drop=True)
    k = int(frame.groupby(["auction", "permutation"]).size().iloc[0])
    if (frame.groupby(["auction", "permutation"]).size() != k).any():
        raise ValueError("every (auction, permutation) needs the same number of candidates")
    s = (frame["log_q"].to_numpy() + frame["bid"].to_numpy() * frame["pctr"].to_numpy()
         / temperature).reshape(-1, k)
    others = np.where(np.eye(k, dtype=bool)[None, :, :], -np.inf, s[:, None, :])
    out = frame.copy()
    out["log_rest"] = np.logaddexp.reduce(others, axis=2).ravel()
    return out


def tilt_itctr(rows: pd.DataFrame, bids: np.ndarray, temperature: float) -> np.ndarray:
    """x_i(b) = pCTR_i P(i | b, others' bids) for each row (focal candidate) and bid: [K, G]."""
    log_q = rows["log_q"].to_numpy()[:, None]
    pctr = rows["pctr"].to_numpy()[:, None]
    rest = rows["log_rest"].to_numpy()[:, None]
    logit = log_q + np.asarray(bids, np.float64) * pctr / temperature - rest
    return pctr / (1.0 + np.exp(-logit))


# --------------------------------------------------------------------------------------------------
# sampled bid sweeps: noisy ITCTR curves, cross-fitted over repeats
# --------------------------------------------------------------------------------------------------


def sweep_arrays(samples: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bids [B], queries [S], x [S, B, R]) from a bid sweep's samples.parquet: x is each
    answer's ITCTR sample (the focal ad's pCTR in the answer, 0 when not shown)."""
    bids = np.sort(samples["bid"].unique())
    sample_ids = np.sort(samples["sample"].unique())
    repeats = np.sort(samples["repeat"].unique())
    x = np.full((sample_ids.size, bids.size, repeats.size), np.nan)
    i = np.searchsorted(sample_ids, samples["sample"].to_numpy())
    j = np.searchsorted(bids, samples["bid"].to_numpy())
    r = np.searchsorted(repeats, samples["repeat"].to_numpy())
    x[i, j, r] = samples["pctr"].to_numpy()
    if np.isnan(x).any():
        raise ValueError("the sweep is missing some (sample, bid, repeat) answers")
    queries = samples.groupby("sample")["query_id"].first().reindex(sample_ids).to_numpy()
    return bids.astype(np.float64), queries, x


def sweep_menus(x: np.ndarray, bids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Menus for every (sample, truthful grid bid) unit of a curve x [S, B]: a VM whose truthful
    bid is bids[g] (value tau bids[g]; tau cancels from every ratio, so it is 1 here) may bid
    any grid bid. Returns value, spend [S*B, 1+B] (column 0 truthful) and the bids [S*B, 1+B]."""
    s, nb = x.shape
    truth = np.tile(np.arange(nb), s)
    rows = np.repeat(np.arange(s), nb)
    cand = np.concatenate([truth[:, None], np.tile(np.arange(nb), (s * nb, 1))], axis=1)
    xk = x[rows[:, None], cand]
    b = bids[cand]
    value = bids[truth][:, None] * xk
    return value, b * xk, b


def sweep_gains(x_fit: np.ndarray, x_eval: np.ndarray, bids: np.ndarray, constraint: str
                ) -> dict[str, np.ndarray]:
    """Choose each unit's deviation on `x_fit`, measure it on `x_eval` (both [S, B]).

    Returns per sample: gain (value of the deviation - value of the truthful bid), truthful
    value, and the deviation's value and spend (its ROI over tau, summed)."""
    value, spend, b = sweep_menus(x_fit, bids)
    if constraint == "per_auction":
        truth_bid = b[:, :1]
        choice = best_feasible(value, b <= truth_bid)
    elif constraint == "aggregate":
        choice, _ = lagrangian_plan(value, spend, 1.0)
    else:
        raise ValueError(f"constraint {constraint!r}: use per_auction or aggregate")
    ev, es, _ = sweep_menus(x_eval, bids)
    rows = np.arange(len(choice))
    s = x_fit.shape[0]
    per = {"deviation_value": ev[rows, choice], "truthful_value": ev[:, 0],
           "deviation_spend": es[rows, choice], "moved": (b[rows, choice] != b[:, 0]) * 1.0}
    out = {k: v.reshape(s, -1).sum(axis=1) for k, v in per.items()}
    out["gain"] = out["deviation_value"] - out["truthful_value"]
    return out


# --------------------------------------------------------------------------------------------------
# classic single-slot first price against frozen opponents
# --------------------------------------------------------------------------------------------------


def draw_auctions(shadings: Sequence[float], n_auctions: int, rng: np.random.Generator,
                  values=None) -> tuple[np.ndarray, np.ndarray]:
    """(focal values [A], opponents' bids [A, n]): every bidder draws a value per auction
    (`config.ValueConfig`, uniform on [0, 1] by default); opponent j bids s_j v_j."""
    vals = ValueSampler(values or ValueConfig(), 1 + len(shadings), rng).draw(n_auctions)
    return vals[:, 0].copy(), vals[:, 1:] * np.asarray(shadings, np.float64)


def empirical_win(others_max: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """P(highest opposing bid < b), from a sample of highest opposing bids."""
    ordered = np.sort(np.asarray(others_max, np.float64))

    def win(b):
        b = np.asarray(b, np.float64)
        return np.searchsorted(ordered, b, side="left") / ordered.size
    return win


def value_points(values: np.ndarray, count: int) -> np.ndarray:
    """`count` equally weighted quantiles of a value sample (the fit's quadrature)."""
    return np.quantile(values, (np.arange(count) + 0.5) / count)


def classic_deviations(win: Callable[[np.ndarray], np.ndarray], values: np.ndarray, tau: float,
                       rng: np.random.Generator, *, objective: str = "value",
                       constraint: str = "aggregate", bid_max: float | None = None,
                       points: int = 400, grid: int = 1601, search_samples: int = 300
                       ) -> dict[str, dict]:
    """Deviations from the truthful bid fitted against the win curve `win` on the value sample.

    objective "value" (a VM with target ROI `tau`) with constraint "per_auction" (per value,
    the bid <= v / tau with the highest win probability) or "aggregate" (a uniform factor, a
    capped linear bid min(c v, cap), a piecewise-linear bid with 6 knots, each shape searched
    by `search_shape`, and the per-value Lagrangian plan); objective "utility" (a utility
    maximizer, truthful bid v: the best uniform factor and the per-value best response).
    Returns {family: {"bid": v -> b, "params": {...}, "fit_value", "fit_spend"}}.
    """
    if objective not in ("value", "utility") or constraint not in ("per_auction", "aggregate"):
        raise ValueError(f"objective {objective!r} / constraint {constraint!r}: use value or "
                         "utility, per_auction or aggregate")
    v = value_points(values, points)
    bid_max = float(bid_max if bid_max is not None else 1.5 * v.max())
    bid_grid = np.linspace(0.0, bid_max, grid)
    x_grid = win(bid_grid)
    out: dict[str, dict] = {}

    def truthful(vv):
        return vv if objective == "utility" else vv / tau

    def add(name, fn, params):
        b = fn(v)
        x = win(b)
        out[name] = {"bid": fn, "params": params, "fit_value": float((v * x).mean()),
                     "fit_spend": float((b * x).mean())}

    if objective == "value" and constraint == "per_auction":
        # Index of the best win probability among the grid bids up to each grid bid.
        record = x_grid > np.maximum.accumulate(np.concatenate([[-1.0], x_grid[:-1]]))
        best_idx = np.maximum.accumulate(np.where(record, np.arange(grid), 0))

        def per_auction(vv):
            limit = truthful(vv)
            j = np.clip(np.searchsorted(bid_grid, limit, side="right") - 1, 0, grid - 1)
            cand = bid_grid[best_idx[j]]
            return np.where(win(cand) > win(limit), cand, limit)
        add("best bid <= v/tau (per value)", per_auction, {})
        return out

    # Per-value menus: column 0 is the truthful bid.
    bids = np.concatenate([truthful(v)[:, None], np.tile(bid_grid, (v.size, 1))], axis=1)
    x = np.concatenate([win(bids[:, :1]), np.tile(x_grid, (v.size, 1))], axis=1)
    value, spend = v[:, None] * x, bids * x
    if objective == "utility":
        m, _ = maximize(lambda p: ((v[None, :] - p[:, :1] * v) * win(p[:, :1] * v)).mean(axis=1),
                        [0.0], [2.0], rng, samples=search_samples, starts=[[1.0]])
        add("uniform factor m v", lambda vv, m=float(m[0]): m * vv, {"m": float(m[0])})
        choice = (value - spend).argmax(axis=1)
        name = "per-value best response"
    else:
        m = float(projected_value(uniform_factor, v, win, tau, np.ones((1, 1)))[1][0])
        add("uniform factor m v", lambda vv, m=m: m * vv, {"m": m})
        k, c, _ = search_shape(capped_shape, v, win, tau, [0.0], [v.max()], rng,
                               starts=[[v.max()]], samples=search_samples)
        cap = float(c * k[0])
        add("capped min(c v, cap)", lambda vv, c=c, cap=cap: np.minimum(c * vv, cap),
            {"c": c, "cap": cap})
        knots = np.quantile(values, np.linspace(0.0, 1.0, 6))
        pl = piecewise_linear(knots)
        h, c, _ = search_shape(pl, v, win, tau, np.zeros(6), np.full(6, knots[-1]), rng,
                               starts=[knots], samples=search_samples)
        heights = c * h
        add("piecewise linear (6 knots)", lambda vv, hh=heights: np.interp(vv, knots, hh),
            {"knots": knots.round(4).tolist(), "bids": heights.round(4).tolist()})
        choice, _ = lagrangian_plan(value, spend, tau)
        name = "per-value Lagrangian"
    # The plan's bids between its value points, and towards (0, 0) below the lowest.
    pv = np.concatenate([[0.0], v])
    pb = np.concatenate([[0.0], bids[np.arange(v.size), choice]])
    add(name, lambda vv, pv=pv, pb=pb: np.interp(vv, pv, pb),
        {"deviating_share": float((choice != 0).mean())})
    return out


def classic_outcomes(values: np.ndarray, others: np.ndarray, bids: np.ndarray,
                     chunk: int = 25_000) -> tuple[np.ndarray, np.ndarray]:
    """Expected clicks and payments [A, F] of the focal bidder's candidate bids [A, F] against
    the opponents' bids [A, n] in single-slot first-price auctions (the classic engine's
    counterfactuals: ties split at random, a zero bid does not take part)."""
    a, f = bids.shape
    clicks, pay = np.zeros((a, f)), np.zeros((a, f))
    for lo in range(0, a, chunk):
        hi = min(lo + chunk, a)
        field = np.concatenate([values[lo:hi, None], others[lo:hi]], axis=1)
        cand = np.zeros((hi - lo, field.shape[1], f))
        cand[:, 0, :] = bids[lo:hi]
        c, p = counterfactual_outcomes("first_price", field, cand)
        clicks[lo:hi], pay[lo:hi] = c[:, 0, :], p[:, 0, :]
    return clicks, pay
