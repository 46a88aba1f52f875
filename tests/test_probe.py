"""The teacher-forced choice probe: its arithmetic on a scorer with a known answer, and its plumbing
on a tiny model."""

import numpy as np
import pytest
from tiny_models import embedded_tokenizer, tiny_llama

from llmauction_sim.domain.catalog import load_catalog
from llmauction_sim.domain.users import generate_profiles
from llmauction_sim.lm.base import Completion
from llmauction_sim.lm.hf import TransformersLM
from llmauction_sim.lm.prompts import ad_llm_messages
from llmauction_sim.mechanisms import AuctionRequest
from llmauction_sim.probe import choice_probe, probe_summary, rotated_bids

CATALOG = load_catalog()
SLOPE = 0.05  # log q_i = SLOPE * b_i + (a fixed effect per candidate) in the known scorer


def requests(n: int = 12, k: int = 4) -> list[AuctionRequest]:
    out = []
    rng = np.random.default_rng(0)
    for j, profile in enumerate(generate_profiles(n, 1, CATALOG)):
        cands = tuple(CATALOG[k * j:k * j + k])
        bids = rng.choice(np.arange(1, 101), k, replace=False).astype(float)
        out.append(AuctionRequest(f"q{j}", profile, "How do I pick a tent?", cands,
                                  dict(zip((a.id for a in cands), bids))))
    return out


class KnownScorer:
    """An LM whose mention scores are SLOPE x the candidate's bid in the prompt plus a fixed
    per-ad offset; it opens every answer with 'Sure. @'."""

    name = "known"

    def generate(self, prompts, params):
        return [[Completion("Sure. @", 3, True)] for _ in prompts]

    def score(self, prompts, continuations):
        out = []
        for chat, cont in zip(prompts, continuations):
            ad_id = cont.split("[")[-1].rstrip("]")
            user = next(m["content"] for m in chat if m["role"] == "user")
            line = next(x for x in user.splitlines() if f"[{ad_id}]" in x)
            bid = float(line.rsplit("bid ", 1)[1])
            out.append(SLOPE * bid + (int(ad_id[-2:]) % 7) * 0.3)
        return np.array(out)


def test_rotation_moves_each_bid_one_candidate_along() -> None:
    r = requests(1)[0]
    ids = [a.id for a in r.candidates]
    rotated = rotated_bids(r, 1)
    assert [rotated.bids[ids[(j + 1) % 4]] for j in range(4)] == [r.bids[i] for i in ids]
    assert sorted(rotated.bids.values()) == sorted(r.bids.values())


def test_probe_recovers_a_known_slope_and_top_bid_mass() -> None:
    reqs = requests()
    frame = choice_probe(KnownScorer(), reqs, lambda r: ad_llm_messages(
        r.profile, r.query, r.candidates, r.bids), permutations=4)
    assert len(frame) == 12 * 4 * 4 and not frame["fallback"].any()
    assert frame.groupby(["auction", "permutation"])["q"].sum().to_numpy() == pytest.approx(1.0)
    summary = probe_summary(frame, np.random.default_rng(0))
    assert summary["log_q_slope_per_bid"]["estimate"] == pytest.approx(SLOPE, rel=1e-6)
    # The same mass computed by hand from the known scores.
    want = []
    for r in reqs:
        for p in range(4):
            rb = rotated_bids(r, p)
            s = np.array([SLOPE * rb.bids[a.id] + (int(a.id[-2:]) % 7) * 0.3
                          for a in r.candidates])
            q = np.exp(s - np.logaddexp.reduce(s))
            want.append(q[np.argmax([rb.bids[a.id] for a in r.candidates])])
    assert summary["top_bid_mass"]["estimate"] == pytest.approx(np.mean(want))
    assert summary["chance"] == 0.25 and summary["top_bid_mass"]["low"] > 0.25


def test_probe_on_a_tiny_model() -> None:
    tokenizer = embedded_tokenizer()
    lm = TransformersLM(tiny_llama(tokenizer), tokenizer, name="tiny")
    reqs = requests(3, 2)
    frame = choice_probe(lm, reqs, lambda r: ad_llm_messages(r.profile, r.query, r.candidates,
                                                             r.bids), permutations=2,
                         max_new_tokens=4)
    assert len(frame) == 3 * 2 * 2
    assert frame["fallback"].all()  # a random model opens no mention: first sentence + " @"
    assert frame.groupby(["auction", "permutation"])["q"].sum().to_numpy() == pytest.approx(1.0)
    summary = probe_summary(frame, np.random.default_rng(0))
    assert summary["chance"] == 0.5 and 0.0 <= summary["top_bid_mass"]["estimate"] <= 1.0
