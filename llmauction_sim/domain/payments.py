"""Payment rules. Pure functions of bids and clicks (no model calls)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


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
