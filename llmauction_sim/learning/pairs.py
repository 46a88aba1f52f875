"""IRPO preference pairs (Algorithm 1, steps 3-4).

For each prompt with M sampled responses and their rewards: the winner is the response with the
highest reward (the first one on a tie), and every response whose reward is more than `delta_th`
below the winner's (R_w - R_l > delta_th, strictly) is a loser. Each (winner, loser) is one row in
TRL's conversational preference format::

    {"prompt": [{"role": "system", ...}, {"role": "user", ...}],
     "chosen": [{"role": "assistant", "content": winner}],
     "rejected": [{"role": "assistant", "content": loser}], ...}

plus bookkeeping columns (prompt_id, margin, chosen_reward, rejected_reward). A prompt whose
responses all lie within `delta_th` of the best gives no pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_DELTA_TH = 10.0


@dataclass(frozen=True)
class ResponseGroup:
    """One prompt (chat messages) with its sampled responses and their rewards."""
    prompt: Sequence[Mapping[str, str]]
    responses: Sequence[str]
    rewards: Sequence[float]
    prompt_id: str = ""


def select_pairs(rewards: Sequence[float], delta_th: float = DEFAULT_DELTA_TH
                 ) -> list[tuple[int, int]]:
    """(winner, loser) index pairs of one group: winner = first argmax, losers R_w - R_l > delta."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        return []
    if not np.all(np.isfinite(r)):
        raise ValueError(f"rewards must be finite, got {r.tolist()}")
    w = int(np.argmax(r))
    return [(w, int(j)) for j in np.flatnonzero(r[w] - r > delta_th)]


def _features():
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features({"prompt": List(message), "chosen": List(message),
                     "rejected": List(message), "prompt_id": Value("string"),
                     "margin": Value("float64"), "chosen_reward": Value("float64"),
                     "rejected_reward": Value("float64")})


def build_preference_pairs(groups: Sequence[ResponseGroup],
                           delta_th: float = DEFAULT_DELTA_TH):
    """A `datasets.Dataset` of (prompt, chosen, rejected) rows for TRL's DPOTrainer."""
    from datasets import Dataset

    if delta_th < 0:
        raise ValueError(f"delta_th = {delta_th} must be >= 0")
    rows: dict[str, list] = {name: [] for name in _features()}
    for g in groups:
        if len(g.responses) != len(g.rewards):
            raise ValueError(f"prompt {g.prompt_id!r}: {len(g.responses)} responses but "
                             f"{len(g.rewards)} rewards")
        prompt = [{"role": str(m["role"]), "content": str(m["content"])} for m in g.prompt]
        for w, loser in select_pairs(g.rewards, delta_th):
            rows["prompt"].append(prompt)
            rows["chosen"].append([{"role": "assistant", "content": g.responses[w]}])
            rows["rejected"].append([{"role": "assistant", "content": g.responses[loser]}])
            rows["prompt_id"].append(str(g.prompt_id))
            rows["chosen_reward"].append(float(g.rewards[w]))
            rows["rejected_reward"].append(float(g.rewards[loser]))
            rows["margin"].append(float(g.rewards[w]) - float(g.rewards[loser]))
    return Dataset.from_dict(rows, features=_features())


def pair_stats(groups: Sequence[ResponseGroup], delta_th: float = DEFAULT_DELTA_TH
               ) -> dict[str, float]:
    """How many prompts gave pairs, how many pairs, and the mean margin."""
    counts, margins = [], []
    for g in groups:
        pairs = select_pairs(g.rewards, delta_th)
        counts.append(len(pairs))
        margins += [float(g.rewards[w]) - float(g.rewards[v]) for w, v in pairs]
    return {"prompts": len(groups), "prompts_with_pairs": sum(c > 0 for c in counts),
            "pairs": sum(counts), "mean_margin": float(np.mean(margins)) if margins else 0.0}


def stratified_subset(prompt_ids: Sequence[str], cap: int, rng: np.random.Generator
                      ) -> np.ndarray:
    """Indices of at most `cap` pairs spread evenly over prompts: one random pair of every prompt,
    then a second of every prompt that has one, and so on (a prompt with many losers does not
    crowd out the others); sorted."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(prompt_ids):
        by_prompt.setdefault(p, []).append(i)
    queues = [rng.permutation(ix) for ix in by_prompt.values()]
    prompt_order = rng.permutation(len(queues))
    order: list[int] = []
    for r in range(max(map(len, queues), default=0)):
        order += [int(queues[q][r]) for q in prompt_order if r < len(queues[q])]
    return np.sort(np.array(order[:cap], dtype=np.int64))


def answer_kind(report) -> str:
    """'error' (any format error), 'ad' (a valid mention, no error) or 'none'."""
    if report.has_format_error:
        return "error"
    return "ad" if report.valid else "none"


def pair_composition(chosen_reports, rejected_reports, bids: Sequence[Mapping[str, float]]
                     ) -> dict[str, float]:
    """What the pairs teach: the share of each (chosen kind, rejected kind) combination, the share
    of valid-vs-valid pairs, and, among pairs whose chosen answer shows an ad, the share whose
    first ad is the auction's top bid (`chosen_top_bid`; a bid-blind policy's chance is 1/K) and
    among valid-vs-valid pairs the share whose chosen first ad has the higher bid
    (`valid_pairs_chosen_higher_bid`)."""
    n = len(bids)
    out: dict[str, float] = {"pairs": float(n)}
    if not n:
        return out
    kinds = [(answer_kind(c), answer_kind(r)) for c, r in zip(chosen_reports, rejected_reports)]
    for a in ("ad", "none", "error"):
        for b in ("ad", "none", "error"):
            out[f"{a}_vs_{b}"] = sum(k == (a, b) for k in kinds) / n
    out["valid_vs_valid"] = out["ad_vs_ad"]
    with_ad = [(c, b) for c, b in zip(chosen_reports, bids) if c.valid]
    out["chosen_top_bid"] = (sum(b[c.exposed_ids[0]] == max(b.values()) for c, b in with_ad)
                             / len(with_ad)) if with_ad else float("nan")
    both = [(c, r, b) for c, r, b, k in zip(chosen_reports, rejected_reports, bids, kinds)
            if k == ("ad", "ad")]
    out["valid_pairs_chosen_higher_bid"] = (
        sum(b[c.exposed_ids[0]] > b[r.exposed_ids[0]] for c, r, b in both) / len(both)
        if both else float("nan"))
    return out
