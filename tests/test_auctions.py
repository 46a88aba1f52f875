"""Classic auctions on hand-computed cases, tie breaking, counterfactuals and revenue equivalence."""

from __future__ import annotations

import numpy as np
import pytest

from llmauction_sim.classic.auctions import (
    classic_auction_names,
    counterfactual_outcomes,
    first_price,
    gsp,
    make_classic_auction,
    second_price,
)

BIDS = np.array([[3.0, 5.0, 1.0], [4.0, 2.0, 6.0]])


def test_first_price_pays_own_bid_per_click() -> None:
    r = first_price(BIDS, ctr=np.array([[0.5, 0.2, 1.0], [1.0, 1.0, 0.1]]), quality=1.0)
    assert r.slot.tolist() == [[-1, 0, -1], [-1, -1, 0]]
    np.testing.assert_allclose(r.price_per_click, [[0, 5, 0], [0, 0, 6]])
    np.testing.assert_allclose(r.clicks, [[0, 0.2, 0], [0, 0, 0.1]])
    np.testing.assert_allclose(r.payment, [[0, 1.0, 0], [0, 0, 0.6]])
    assert r.revenue == pytest.approx(1.6)


def test_second_price_pays_the_next_score_over_own_quality() -> None:
    r = second_price(BIDS)
    np.testing.assert_allclose(r.payment, [[0, 3, 0], [0, 0, 4]])
    # With quality: scores 3*1, 5*0.5=2.5, 1*1 -> bidder 0 wins and pays 2.5 / 1.
    r = second_price([[3.0, 5.0, 1.0]], quality=[[1.0, 0.5, 1.0]])
    np.testing.assert_allclose(r.price_per_click, [[2.5, 0, 0]])
    with pytest.raises(ValueError, match="gsp"):
        second_price(BIDS, slot_weights=[1.0, 0.5])


def test_gsp_with_slot_weights_and_quality() -> None:
    # scores: 4*0.5=2, 3*1=3, 2*2=4, 1*1=1 -> order 2, 1, 0 | 3 unallocated.
    bids = [[4.0, 3.0, 2.0, 1.0]]
    q = [[0.5, 1.0, 2.0, 1.0]]
    r = gsp(bids, quality=q, ctr=1.0, slot_weights=[1.0, 0.6, 0.3])
    assert r.slot.tolist() == [[2, 1, 0, -1]]
    # prices: bidder 2 pays 3/2, bidder 1 pays 2/1, bidder 0 pays 1/0.5.
    np.testing.assert_allclose(r.price_per_click, [[2.0, 2.0, 1.5, 0.0]])
    np.testing.assert_allclose(r.clicks, [[0.3, 0.6, 1.0, 0.0]])
    # One slot: GSP is the second-price auction.
    np.testing.assert_allclose(gsp(BIDS).payment, second_price(BIDS).payment)


def test_reserve_price() -> None:
    r = second_price([[3.0, 0.5], [0.2, 0.1]], reserve=1.0)
    np.testing.assert_allclose(r.price_per_click, [[1.0, 0.0], [0.0, 0.0]])
    assert r.slot.tolist() == [[0, -1], [-1, -1]]


def test_ties_are_broken_at_random_by_the_seeded_generator() -> None:
    bids = np.full((20_000, 4), 2.0)
    winners = first_price(bids, rng=np.random.default_rng(1)).slot.argmax(axis=1)
    share = np.bincount(winners, minlength=4) / len(winners)
    np.testing.assert_allclose(share, 0.25, atol=0.02)  # 4 sigma ~ 0.012
    again = first_price(bids, rng=np.random.default_rng(1)).slot.argmax(axis=1)
    np.testing.assert_array_equal(winners, again)
    # Without a Generator the lower index wins; with several slots the order is random too.
    assert first_price(bids[:3]).slot[:, 0].tolist() == [0, 0, 0]
    slots = gsp(bids, slot_weights=[1, 1, 1], rng=np.random.default_rng(2)).slot
    assert np.all(np.sort(slots, axis=1) == [-1, 0, 1, 2])


@pytest.mark.parametrize("name, weights", [("first_price", [1.0]), ("second_price", [1.0]),
                                           ("gsp", [1.0, 0.5, 0.25]), ("first_price", [1, .4])])
def test_counterfactual_of_own_bid_matches_the_mechanism(name, weights) -> None:
    rng = np.random.default_rng(0)
    bids = rng.uniform(0, 1, (300, 5))
    ctr = rng.uniform(0.2, 1.0, (300, 5))
    r = make_classic_auction(name)(bids, ctr=ctr, slot_weights=weights)
    clicks, pay = counterfactual_outcomes(name, bids, bids[:, :, None] * [1.0, 0.0], ctr=ctr,
                                          slot_weights=weights)
    np.testing.assert_allclose(clicks[..., 0], r.clicks)
    np.testing.assert_allclose(pay[..., 0], r.payment)
    assert np.all(clicks[..., 1] == 0)  # a zero bid loses to every positive bid


def test_revenue_equivalence_first_vs_second_price() -> None:
    """Uniform values, n = 4: first price at the equilibrium bid (n-1)/n v and second price with
    truthful bids both earn E[second highest value] = (n-1)/(n+1) = 0.6 (tolerance 0.01, ~7 s.e.)."""
    n, rng = 4, np.random.default_rng(3)
    values = rng.uniform(0, 1, (200_000, n))
    fp = first_price(values * (n - 1) / n, rng=rng).revenue / len(values)
    sp = second_price(values, rng=rng).revenue / len(values)
    assert fp == pytest.approx(0.6, abs=0.01) and sp == pytest.approx(0.6, abs=0.01)
    assert abs(fp - sp) < 0.01


def test_registry() -> None:
    assert classic_auction_names() == ["first_price", "gsp", "second_price"]
    with pytest.raises(ValueError, match="did you mean 'gsp'"):
        make_classic_auction("gps")
    with pytest.raises(ValueError, match=">= 0"):
        first_price([[1.0, -1.0]])


def test_counterfactual_tie_is_the_expected_outcome_of_the_random_tie_break() -> None:
    """A k-way tie for the last slots left wins each with probability slots_left / k."""
    clicks, pay = counterfactual_outcomes("first_price", [[0.5, 0.5]], [[[0.5], [0.5]]])
    np.testing.assert_allclose(clicks[..., 0], [[0.5, 0.5]])
    np.testing.assert_allclose(pay[..., 0], [[0.25, 0.25]])
    # GSP, three tied for two slots (weights 1, 0.6): each gets 1.6 / 3 clicks and pays the tied
    # score 1 per click; the bidder below gets nothing.
    bids = np.array([[1.0, 1.0, 1.0, 0.5]])
    clicks, pay = counterfactual_outcomes("gsp", bids, bids[:, :, None], slot_weights=[1.0, 0.6])
    np.testing.assert_allclose(clicks[..., 0], [[1.6 / 3] * 3 + [0.0]])
    np.testing.assert_allclose(pay[..., 0], [[1.6 / 3] * 3 + [0.0]])
    # The mechanism's random tie break gives the same outcome on average (tolerance ~5 s.e.).
    for name, weights in (("first_price", [1.0]), ("second_price", [1.0]),
                          ("gsp", [1.0, 0.6, 0.3]), ("gsp", [1.0, 0.6])):
        b = np.array([[0.8, 0.8, 0.8, 0.5, 0.5]])
        many = np.repeat(b, 40_000, axis=0)
        r = make_classic_auction(name)(many, slot_weights=weights, rng=np.random.default_rng(0))
        clicks, pay = counterfactual_outcomes(name, b, b[:, :, None], slot_weights=weights)
        np.testing.assert_allclose(r.clicks.mean(axis=0), clicks[0, :, 0], atol=0.012)
        np.testing.assert_allclose(r.payment.mean(axis=0), pay[0, :, 0], atol=0.012)
    # A candidate bid tying another bidder's counts the same way.
    clicks, _ = counterfactual_outcomes("second_price", [[0.5, 0.3]], [[[0.3], [0.5]]])
    np.testing.assert_allclose(clicks[..., 0], [[0.5, 0.5]])


def test_invalid_inputs_are_rejected_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="ctr.*NaN"):
        first_price([[1.0, 2.0]], ctr=[[np.nan, 0.5]])
    with pytest.raises(ValueError, match="ctr.*>= 0"):
        first_price([[1.0, 2.0]], ctr=[[-0.5, 0.5]], quality=1.0)
    with pytest.raises(ValueError, match="quality"):
        gsp([[1.0, 2.0]], quality=[[np.nan, 0.5]])
    for bad in (np.nan, np.inf, -1.0):
        with pytest.raises(ValueError, match="bids"):
            second_price([[1.0, bad]])
    with pytest.raises(ValueError, match="candidate_bids"):
        counterfactual_outcomes("first_price", [[1.0, 2.0]], [[[np.nan], [1.0]]])
    with pytest.raises(ValueError, match="reserve"):
        first_price([[1.0, 2.0]], reserve=np.nan)


@pytest.mark.parametrize("name", ["first_price", "second_price", "gsp"])
def test_zero_bids_and_bids_below_the_reserve_do_not_participate(name) -> None:
    mech = make_classic_auction(name)
    weights = [1.0] if name == "second_price" else [1.0, 0.5, 0.25]
    r = mech([[0.0, 0.0, 0.0]], slot_weights=weights, rng=np.random.default_rng(0))
    assert r.slot.tolist() == [[-1, -1, -1]] and r.revenue == 0.0
    r = mech([[0.0, 0.4, 0.0]], slot_weights=weights, rng=np.random.default_rng(0))
    assert r.slot.tolist() == [[-1, 0, -1]]
    np.testing.assert_allclose(r.payment, [[0.0, 0.4 if name == "first_price" else 0.0, 0.0]])
    # With a reserve, a bid at the reserve participates and one below it does not.
    r = mech([[0.5, 2.0, 1.0]], slot_weights=weights, reserve=1.0)
    expected = [[-1, 0, -1]] if name == "second_price" else [[-1, 0, 1]]
    assert r.slot.tolist() == expected
    # The counterfactual agrees: a zero bid wins nothing even when every other bid is zero.
    clicks, pay = counterfactual_outcomes(name, [[0.0, 0.0, 0.0]], np.zeros((1, 3, 1)),
                                          slot_weights=weights)
    assert np.all(clicks == 0) and np.all(pay == 0)


def test_slot_weights_rule_is_shared_with_the_payment_rules() -> None:
    """Slots beyond the given weights repeat the last weight, in the auctions and in payments."""
    from llmauction_sim.domain.payments import slot_weight, slot_weights_for, vcg_slot_prices

    np.testing.assert_allclose(slot_weights_for([1.0, 0.5], 4), [1.0, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(slot_weights_for([1.0, 0.5, 0.2], 2), [1.0, 0.5])
    np.testing.assert_allclose(slot_weights_for([1.0, 0.5]), [1.0, 0.5])
    assert [slot_weight([1.0, 0.5], j) for j in range(4)] == [1.0, 0.5, 0.5, 0.5]
    bids = np.array([[4.0, 3.0, 2.0, 1.0]])
    short = gsp(bids, slot_weights=[1.0, 0.5], slots=3)
    full = gsp(bids, slot_weights=[1.0, 0.5, 0.5])
    assert short.slot.tolist() == full.slot.tolist() == [[0, 1, 2, -1]]
    np.testing.assert_allclose(short.payment, full.payment)
    clicks, pay = counterfactual_outcomes("gsp", bids, bids[:, :, None], slot_weights=[1.0, 0.5],
                                          slots=3)
    np.testing.assert_allclose(clicks[..., 0], full.clicks)
    np.testing.assert_allclose(pay[..., 0], full.payment)
    # VCG with three slots from two weights uses the same weights as the auctions.
    prices = vcg_slot_prices({"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0},
                             dict.fromkeys("abcd", 1.0), [1.0, 0.5], 3)
    assert prices["c"] == pytest.approx(1.0)  # (0.5 - 0) * 1 over 0.5 clicks
