"""Payment rules. Pure functions of bids, qualities and clicks (no model calls): first price per
click (the paper), GSP and VCG for slot auctions, and the Myerson payment of any monotone
allocation curve."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np


def first_price_per_click(bids: Mapping[str, float], clicked: Iterable[str]) -> dict[str, float]:
    """The paper's rule (Eq. 7): each clicked ad pays its own bid, once per click.

    Only ads in `bids` (this query's candidates) can be charged; a clicked ID without a bid is a
    caller error, since only valid exposures of candidates may be clicked.
    """
    payments: dict[str, float] = {}
    for ad_id in clicked:
        if ad_id not in bids:
            raise KeyError(f"clicked ad {ad_id!r} has no bid in this auction; only candidates "
                           "that were validly exposed can be charged")
        payments[ad_id] = payments.get(ad_id, 0.0) + float(bids[ad_id])
    return payments


# ------------------------------------------------------------------------------------------------
# Slot auctions (pre-generation baseline): ads ranked by score = bid x quality (pCTR)
# ------------------------------------------------------------------------------------------------

def rank_by_score(bids: Mapping[str, float], quality: Mapping[str, float]) -> list[str]:
    """Ad IDs by decreasing bid x quality; ties go to the higher bid, then the smaller ID."""
    return sorted(bids, key=lambda i: (-float(bids[i]) * float(quality[i]), -float(bids[i]), i))


def slot_weights_for(weights: Sequence[float], slots: int | None = None) -> np.ndarray:
    """The position weights of `slots` slots (default: one per weight); the one slot-weight rule.

    Slots beyond the list repeat its last weight, extra weights are ignored and an empty list means
    weight 1 for every slot. Both the slot auction's payment rules here and the vectorized
    mechanisms of `domain.auctions` take their weights from this function.
    """
    w = np.asarray(weights, dtype=float).ravel()
    if slots is None:
        slots = w.size
    if slots < 0:
        raise ValueError(f"slots = {slots} must be >= 0")
    if not np.all(np.isfinite(w) & (w >= 0)):
        raise ValueError(f"slot weights must be finite and >= 0, got {w.tolist()}")
    if w.size == 0:
        return np.ones(slots)
    return w[np.minimum(np.arange(slots), w.size - 1)]


def slot_weight(weights: Sequence[float], slot: int) -> float:
    """Weight of 0-based `slot` under `slot_weights_for`'s rule."""
    return float(slot_weights_for(weights, slot + 1)[slot])


def gsp_prices(bids: Mapping[str, float], quality: Mapping[str, float], slots: int
               ) -> dict[str, float]:
    """Generalized second price per click for the top `slots` ads (Edelman et al.; Varian).

    The ad in slot j pays the smallest bid that keeps its rank: score_{j+1} / quality_j, where
    score = bid x quality and score_{j+1} is the next-ranked ad's score (0 when none). With a
    separable click model (clicks = slot weight x quality) the slot weights cancel. A winner with
    zero quality pays 0 (it is never clicked in expectation).
    """
    order = rank_by_score(bids, quality)
    prices: dict[str, float] = {}
    for j, ad_id in enumerate(order[:slots]):
        q = float(quality[ad_id])
        nxt = order[j + 1] if j + 1 < len(order) else None
        score_next = float(bids[nxt]) * float(quality[nxt]) if nxt is not None else 0.0
        prices[ad_id] = min(float(bids[ad_id]), score_next / q) if q > 0 else 0.0
    return prices


def vcg_slot_prices(bids: Mapping[str, float], quality: Mapping[str, float],
                    slot_weights: Sequence[float], slots: int) -> dict[str, float]:
    """VCG price per click for a position auction with clicks = w_j x quality_i.

    The ad in slot j pays its externality, sum_{l >= j} (w_l - w_{l+1}) x score_{l+1} in expected
    money (w_l = 0 beyond the last slot, score_{l+1} = 0 beyond the last ad), divided by its
    expected clicks w_j x quality_j to give a price per click.
    """
    order = rank_by_score(bids, quality)
    w = [*slot_weights_for(slot_weights, slots).tolist(), 0.0]
    scores = [float(bids[i]) * float(quality[i]) for i in order] + [0.0] * (slots + 1)
    prices: dict[str, float] = {}
    for j, ad_id in enumerate(order[:slots]):
        total = sum((w[m] - w[m + 1]) * scores[m + 1] for m in range(j, slots))
        clicks = w[j] * float(quality[ad_id])
        prices[ad_id] = min(float(bids[ad_id]), total / clicks) if clicks > 0 else 0.0
    return prices


def per_click(prices: Mapping[str, float], clicked: Iterable[str]) -> dict[str, float]:
    """Charge each click its ad's price per click (ads without a price were not allocated)."""
    payments: dict[str, float] = {}
    for ad_id in clicked:
        if ad_id not in prices:
            raise KeyError(f"clicked ad {ad_id!r} has no price: it was not allocated a slot")
        payments[ad_id] = payments.get(ad_id, 0.0) + float(prices[ad_id])
    return payments


# ------------------------------------------------------------------------------------------------
# Myerson payment for any monotone allocation curve
# ------------------------------------------------------------------------------------------------

def myerson_payment(allocation: Callable[[np.ndarray], np.ndarray] | Callable[[float], float],
                    bid: float, points: int = 257) -> float:
    """p(b) = b x(b) - integral_0^b x(z) dz (Myerson's lemma), by the trapezoid rule.

    `allocation` maps a bid to the expected allocation (e.g. ITCTR); it is called on an array of
    `points` bids in [0, b] when it accepts one, else once per point. The allocation must be
    non-decreasing for the payment to make truthful bidding optimal; a non-monotone curve still
    gives a number, but not an incentive-compatible one (`analysis.violation_rate` checks).
    Exact for piecewise-linear curves on the grid: x(b) = b/100 gives b^2/200.
    """
    if bid <= 0:
        return 0.0
    grid = np.linspace(0.0, float(bid), int(points))
    try:
        values = np.asarray(allocation(grid), dtype=np.float64)
        if values.shape != grid.shape:
            raise ValueError
    except (TypeError, ValueError):
        values = np.array([float(allocation(float(z))) for z in grid])
    area = float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2.0)
    return float(bid) * float(values[-1]) - area

