"""Classic auctions, vectorized over a batch of auctions (pure numpy).

A batch holds ``A`` independent auctions with the same ``n`` bidders. Every mechanism here ranks the
bidders of each auction by their score ``s_ai = b_ai * q_ai`` (bid times quality; quality defaults to
the click-through rate ``c_ai``, which defaults to 1) and gives the ``K`` slots, in order, to the
``K`` highest scores among the participating bidders. A bidder participates when its bid is positive
and reaches the reserve ``r`` (``b_ai > 0`` and ``b_ai >= r``); a zero bid, or one below the reserve,
gets no slot and pays nothing, in every mechanism, even when no one else bids. Slot ``k`` has a
position weight ``w_k`` (``w_0 = 1`` for the top slot); ``K`` is the number of weights, or the
``slots`` argument, in which case slots beyond the weights repeat the last weight
(`domain.payments.slot_weights_for`, the rule the slot auction's payment rules use too). Bidder ``i``
in slot ``k`` of auction ``a`` gets

    expected clicks   x_ai = w_k * c_ai          (0 when unallocated)

and pays a price per click ``p_ai``, i.e. an expected payment per auction of ``p_ai * x_ai``:

- ``first_price``:  ``p_ai = b_ai`` (pay your own bid per click; the paper's Eq. 7 rule).
- ``second_price``: one slot; ``p_ai = max(r, max_{j != i} s_aj / q_ai)`` (Vickrey per click).
- ``gsp``:          ``p_ai = max(r, s_a(k+1) / q_ai)`` where ``s_a(k+1)`` is the score ranked just
  below bidder i (0 when there is none): generalized second price with slot weights.

Ties between equal scores are broken uniformly at random with the given numpy Generator (or by the
lower bidder index when no Generator is given).

Bids, the reserve, click-through rates (finite, >= 0) and qualities (finite, > 0) are checked; a NaN
or out-of-range entry raises a ValueError naming it.

`counterfactual_outcomes` evaluates, for every bidder and every candidate bid on a grid, the clicks and
payment that bid would have got against the others' actual bids in each auction, in expectation over
the random tie break; learning bidders use it as full-information feedback and the metrics use it for
regret against the best fixed bid in hindsight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llmauction_sim.domain.payments import slot_weights_for
from llmauction_sim.registry import Registry


@dataclass(frozen=True)
class AuctionResult:
    """Outcome of a batch of ``A`` auctions with ``n`` bidders (all arrays are ``[A, n]``)."""

    slot: np.ndarray             # slot index of each bidder, -1 when not allocated
    clicks: np.ndarray           # expected clicks x_ai = w_slot * c_ai (0 when not allocated)
    price_per_click: np.ndarray  # p_ai (0 when not allocated)

    @property
    def payment(self) -> np.ndarray:
        """Expected payment per auction, p_ai * x_ai."""
        return self.price_per_click * self.clicks

    @property
    def revenue(self) -> float:
        """Total expected payment over the batch."""
        return float(self.payment.sum())


def _check(name: str, values: np.ndarray, positive: bool, fix: str) -> None:
    """Raise a ValueError naming what is wrong with `values` (NaN, inf, out of range) and the fix."""
    bound = "> 0" if positive else ">= 0"
    if np.isnan(values).any():
        problem = "NaN"
    elif np.isinf(values).any():
        problem = "an infinite value"
    elif (values <= 0).any() if positive else (values < 0).any():
        problem = f"{values.min():g}"
    else:
        return
    raise ValueError(f"{name} must be finite and {bound} for every bidder, got {problem}; {fix}")


def _prepare(bids, ctr, quality, slot_weights, slots=None, reserve=0.0):
    bids = np.asarray(bids, dtype=float)
    if bids.ndim == 1:
        bids = bids[None, :]
    if bids.ndim != 2:
        raise ValueError(f"bids must have shape [auctions, bidders], got {bids.shape}")
    _check("bids", bids, False, "give 0 for a bidder that does not bid")
    if not (np.isfinite(reserve) and reserve >= 0):
        raise ValueError(f"reserve must be a finite price >= 0, got {reserve}; use 0 for none")
    # None stands for "all ones" (ctr) and "same as ctr" (quality) so the common case stays cheap.
    if ctr is not None:
        ctr = np.broadcast_to(np.asarray(ctr, float), bids.shape)
        _check("ctr (click-through rate)", ctr, False,
               "give 0 for a bidder that is never clicked")
    if quality is None:
        quality = ctr
        if ctr is not None:
            _check("quality (default: ctr)", ctr, True,
                   "pass quality explicitly when some click-through rates are 0")
    else:
        quality = np.broadcast_to(np.asarray(quality, float), bids.shape)
        _check("quality", quality, True, "a bidder's quality scales its score b*q")
    if slots is None and np.size(slot_weights) < 1:
        raise ValueError("slot_weights must be a non-empty list of weights >= 0, got []")
    return bids, ctr, quality, slot_weights_for(slot_weights, slots)


def _rank(scores: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Order of bidders per auction, best score first; equal scores in random order."""
    if rng is None:
        return np.argsort(-scores, axis=1, kind="stable")
    tiebreak = rng.random(scores.shape)
    return np.lexsort((tiebreak, -scores), axis=1)


def _top1(scores: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """Index of the best score per auction (fast path for one slot); ties at random."""
    winner = scores.argmax(axis=1)
    last = scores.shape[1] - 1 - scores[:, ::-1].argmax(axis=1)   # differs from winner iff tied
    tied = np.flatnonzero(last != winner)
    if tied.size and rng is not None:
        sub = scores[tied]
        is_best = sub == sub.max(axis=1, keepdims=True)
        winner[tied] = (rng.random(sub.shape) * is_best).argmax(axis=1)
    return winner


def _allocate(bids, ctr, quality, weights, reserve, rng, pricing: str) -> AuctionResult:
    num_auctions, n = bids.shape
    eligible = (bids >= reserve) & (bids > 0)
    # Non-participants rank below everyone (scores of participants are > 0).
    scores = np.where(eligible, bids if quality is None else bids * quality, -1.0)
    rows = np.arange(num_auctions)
    slot = np.full((num_auctions, n), -1, dtype=np.int64)
    price = np.zeros((num_auctions, n))
    clicks = np.zeros((num_auctions, n))
    k = min(weights.size, n)
    if k == 1:
        winner = _top1(scores, rng)
        won = eligible[rows, winner]
        w_rows, w_idx = rows[won], winner[won]
        slot[w_rows, w_idx] = 0
        clicks[w_rows, w_idx] = weights[0] * (1.0 if ctr is None else ctr[w_rows, w_idx])
        if pricing == "first":
            price[w_rows, w_idx] = bids[w_rows, w_idx]
        else:
            others = scores.copy()
            others[rows, winner] = -1.0
            below = np.maximum(others.max(axis=1), 0.0) if n > 1 else np.zeros(num_auctions)
            q = 1.0 if quality is None else quality[w_rows, w_idx]
            price[w_rows, w_idx] = np.maximum(below[won] / q, reserve)
        return AuctionResult(slot, clicks, price)
    ctr = np.ones_like(bids) if ctr is None else ctr
    quality = ctr if quality is None else quality
    order = _rank(scores, rng)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    next_scores = np.concatenate([sorted_scores[:, 1:], np.zeros((num_auctions, 1))], axis=1)
    next_scores = np.maximum(next_scores, 0.0)
    for j in range(k):
        idx = order[:, j]
        won = eligible[rows, idx]
        w_rows, w_idx = rows[won], idx[won]
        slot[w_rows, w_idx] = j
        clicks[w_rows, w_idx] = weights[j] * ctr[w_rows, w_idx]
        if pricing == "first":
            price[w_rows, w_idx] = bids[w_rows, w_idx]
        else:
            price[w_rows, w_idx] = np.maximum(next_scores[won, j] / quality[w_rows, w_idx],
                                              reserve)
    return AuctionResult(slot, clicks, price)


def first_price(bids, *, ctr=None, quality=None, slot_weights: Sequence[float] = (1.0,),
                slots: int | None = None, reserve: float = 0.0,
                rng: np.random.Generator | None = None) -> AuctionResult:
    """First price per click: rank by ``b*q``; each allocated bidder pays its own bid per click.

    With several slot weights this is the generalized first-price auction (GFP).
    """
    return _allocate(*_prepare(bids, ctr, quality, slot_weights, slots, reserve), reserve, rng,
                     "first")


def second_price(bids, *, ctr=None, quality=None, slot_weights: Sequence[float] = (1.0,),
                 slots: int | None = None, reserve: float = 0.0,
                 rng: np.random.Generator | None = None) -> AuctionResult:
    """Second price per click, one slot: the winner pays ``max(r, best other score / own quality)``.

    For several slots use `gsp` (which equals this rule when there is one slot).
    """
    bids, ctr, quality, weights = _prepare(bids, ctr, quality, slot_weights, slots, reserve)
    if weights.size != 1:
        raise ValueError("second_price sells one slot; for several slot weights use 'gsp'")
    return _allocate(bids, ctr, quality, weights, reserve, rng, "second")


def gsp(bids, *, ctr=None, quality=None, slot_weights: Sequence[float] = (1.0,),
        slots: int | None = None, reserve: float = 0.0,
        rng: np.random.Generator | None = None) -> AuctionResult:
    """Generalized second price: slot k goes to the k-th score ``b*q``; its holder pays per click
    the next score divided by its own quality, ``max(r, s_(k+1) / q_i)``."""
    return _allocate(*_prepare(bids, ctr, quality, slot_weights, slots, reserve), reserve, rng,
                     "second")


ClassicAuction = Callable[..., AuctionResult]

_PRICING = {"first_price": "first", "second_price": "second", "gsp": "second"}
# Named apart from the LLM market's mechanisms (`mechanisms.register_mechanism`): these are
# vectorized numpy auctions of `[auctions, bidders]` bids, not allocation rules over text.
CLASSIC_AUCTIONS: Registry[ClassicAuction] = Registry("classic auction")
for _name, _fn, _description in (
        ("first_price", first_price, "rank by bid x quality; each winner pays its own bid per click"),
        ("second_price", second_price, "one slot; the winner pays the best other score over its "
         "own quality per click"),
        ("gsp", gsp, "slot k to the k-th score; its holder pays the next score over its own "
         "quality per click")):
    CLASSIC_AUCTIONS.register(_name, _fn, _description)


def register_classic_auction(name: str, auction: ClassicAuction, pricing: str | None = None,
                             description: str | None = None, *, replace: bool = False) -> None:
    """Add a classic auction under `name`; `pricing` ('first' or 'second') enables counterfactuals;
    `description` is one line (default: the function's docstring)."""
    CLASSIC_AUCTIONS.register(name, auction, description, replace=replace)
    if pricing is not None:
        _PRICING[name] = pricing


def classic_auction_names() -> list[str]:
    return CLASSIC_AUCTIONS.names()


def make_classic_auction(name: str) -> ClassicAuction:
    """The classic auction registered as `name`; a clear error naming the choices otherwise."""
    return CLASSIC_AUCTIONS.get(name)


def counterfactual_outcomes(mechanism: str, bids, candidate_bids, *, ctr=None, quality=None,
                            slot_weights: Sequence[float] = (1.0,), slots: int | None = None,
                            reserve: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Expected clicks and payments each bidder would get with each candidate bid, others' bids fixed.

    `bids` is ``[A, n]``; `candidate_bids` is ``[A, n, G]`` (bidder i's G alternative bids in auction
    a). Returns ``(clicks, payment)``, both ``[A, n, G]``. A candidate ``b'`` participates when
    ``b' > 0`` and ``b' >= reserve``; with score ``x = b' * q_ai``, ``h`` participating others scoring
    above x and ``e`` others scoring exactly x, the mechanism's uniform tie break puts the bidder at
    rank ``h + u`` with ``u`` uniform on ``0..e``. The result is the expectation over u (a k-way tie
    for the last ``l`` slots wins each with probability l/k), so a tie is neither a sure win nor a
    sure loss: rank r gives ``w_r * c_ai`` clicks (0 when ``r >= K``) at the price per click ``b'``
    (first price), or ``max(reserve, s_(r) / q_ai)`` (second price, GSP) with ``s_(r)`` the others'
    r-th highest score (0-based), which is ``x`` itself while a tied bidder ranks below.
    With no Generator the mechanisms break ties by bidder index instead, which this does not follow.
    """
    if mechanism not in _PRICING:
        raise ValueError(f"no counterfactual rule for mechanism {mechanism!r}; known: "
                         f"{', '.join(sorted(_PRICING))}")
    pricing = _PRICING[mechanism]
    bids, ctr, quality, weights = _prepare(bids, ctr, quality, slot_weights, slots, reserve)
    ctr = np.ones_like(bids) if ctr is None else ctr
    quality = ctr if quality is None else quality
    candidate_bids = np.asarray(candidate_bids, dtype=float)
    _check("candidate_bids", candidate_bids, False, "give 0 for a candidate that does not bid")
    num_auctions, n = bids.shape
    scores = np.where((bids >= reserve) & (bids > 0), bids * quality, -1.0)
    x = candidate_bids * quality[:, :, None]                                 # [A, n, G]
    # h, e: OTHER participating bidders scoring above / exactly x (own entry subtracted).
    higher = ((scores[:, None, None, :] > x[:, :, :, None]).sum(axis=-1)
              - (scores[:, :, None] > x))
    tied = ((scores[:, None, None, :] == x[:, :, :, None]).sum(axis=-1)
            - (scores[:, :, None] == x))
    participates = (candidate_bids > 0) & (candidate_bids >= reserve)
    k = min(weights.size, n)
    w = np.zeros(n + 1)
    w[:k] = weights[:k]
    cum = np.concatenate([[0.0], np.cumsum(w)])          # cum[r] = w_0 + ... + w_(r-1)
    share = np.where(participates, 1.0 / (tied + 1), 0.0)
    clicks = (cum[higher + tied + 1] - cum[higher]) * share * ctr[:, :, None]
    if pricing == "first":
        return clicks, candidate_bids * clicks
    # Ranks h..h+e-1 have a tied bidder below and pay b'; rank h+e pays the next lower score.
    order = np.argsort(-scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    padded = np.concatenate([np.maximum(sorted_scores, 0.0), np.zeros((num_auctions, 2))], axis=1)
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(n)[None, :].repeat(num_auctions, 0), axis=1)
    last = higher + tied
    index = np.minimum(last + (last >= position[:, :, None]), n + 1)       # skip own entry
    below = np.take_along_axis(padded[:, None, :].repeat(n, axis=1), index, axis=2)
    last_price = np.maximum(below / quality[:, :, None], reserve)
    tied_weight = cum[last] - cum[higher]
    payment = (tied_weight * candidate_bids + w[last] * last_price) * share * ctr[:, :, None]
    return clicks, payment
