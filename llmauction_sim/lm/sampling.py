"""Per-row sampling for the transformers backend: a counter-based RNG (splitmix64 over row seed,
step and token id), the Gumbel-max sampler with per-row temperature, top-k and top-p, the
log-probabilities of that sampler's distribution, and logit biases."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmauction_sim.lm.base import SamplingParams

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # constants of splitmix64, as signed int64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)  # logical shift on int64


def _mix64(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def token_uniforms(seeds: torch.Tensor, step: int, token_ids: torch.Tensor) -> torch.Tensor:
    """U(0,1) per (row seed, step, token id) from a counter-based hash (splitmix64).

    Noise tied to the token id, not to its rank or to the batch, makes a row's samples independent
    of the other rows and of its top-k width, and continuous in the logits.
    """
    h = _mix64(seeds[:, None] ^ _mix64(token_ids * _GOLDEN + step))
    return (_shr(h, 11).double() + 0.5) / 2.0**53


def proposal_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                      params: SamplingParams) -> torch.Tensor:
    """log q(target) per position under `sample_tokens`' distribution for `params`: softmax of
    logits / T over the top-k tokens, cut to the smallest prefix reaching mass top_p.

    A target outside the kept set (possible only at the set's edge, where the decode and the
    scoring pass differ in rounding) gets its tempered, untruncated log-probability instead of
    -inf, so an importance weight never divides by zero.
    """
    vocab = logits.shape[-1]
    if params.temperature <= 0:  # greedy: the argmax has probability one
        return torch.where(logits.argmax(-1) == targets, 0.0, float("-inf"))
    scaled = logits / params.temperature
    k = min(params.top_k, vocab) if params.top_k > 0 else vocab
    vals, idx = scaled.topk(k, dim=-1)  # sorted, descending
    logq = torch.log_softmax(_nucleus(vals, params.top_p), dim=-1)
    match = idx == targets[..., None]
    lp = logq.gather(-1, match.float().argmax(-1, keepdim=True)).squeeze(-1)
    inside = match.any(-1) & torch.isfinite(lp)
    fallback = torch.log_softmax(scaled, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return torch.where(inside, lp, fallback)


def _nucleus(vals: torch.Tensor, top_p) -> torch.Tensor:
    """`vals` (sorted descending along the last dim) with everything after the smallest prefix
    whose softmax mass reaches `top_p` set to -inf (the first value is always kept)."""
    probs = torch.softmax(vals, dim=-1)
    before = probs.cumsum(-1) - probs
    return vals.masked_fill(before >= top_p, float("-inf"))


def sample_tokens(logits: torch.Tensor, temps: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """Sample one token per row with its own temperature, top-k, top-p and seed (Gumbel-max)."""
    vocab = logits.shape[-1]
    greedy = temps <= 0
    k_all = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    kmax = int(k_all.max())
    vals, idx = logits.topk(kmax, dim=-1)  # sorted, descending
    vals = vals / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
    ranks = torch.arange(kmax, device=logits.device)[None, :]
    vals = vals.masked_fill(ranks >= k_all[:, None], float("-inf"))
    vals = _nucleus(vals, top_p[:, None])
    gumbel = -torch.log(-torch.log(token_uniforms(seeds, step, idx))).to(vals.dtype)
    choice = torch.where(greedy, torch.zeros_like(top_k), (vals + gumbel).argmax(-1))
    return idx.gather(-1, choice[:, None]).squeeze(-1)



def logit_bias_matrix(params: Sequence[SamplingParams], vocab: int, device
                      ) -> torch.Tensor | None:
    """[rows, vocab] additive biases of each row's `params.logit_bias`; None when no row has one."""
    if not any(p.logit_bias for p in params):
        return None
    bias = torch.zeros(len(params), vocab, device=device)
    for i, p in enumerate(params):
        for token, value in p.logit_bias:
            if token < vocab:
                bias[i, token] += value
    return bias
