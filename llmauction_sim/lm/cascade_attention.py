"""Cascade attention: every row attends to one stored copy of the prompt prefix its batch shares,
plus its own tokens; registered with transformers as the attention implementation `CASCADE`."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from llmauction_sim.lm.cpu_kernels import decode_attention

CASCADE = "llmauction_cascade"


def _attend(query, key, value, mask, scale):
    """(output, log-sum-exp) of softmax attention; fused CPU kernel where there is one."""
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=mask, scale=scale)
    scores = query.float() @ key.float().transpose(-1, -2) * (scale or query.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.softmax(scores, dim=-1) @ value.float()).to(query.dtype), lse


def cascade_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      is_causal=None, **kwargs):
    """Attention over [shared prefix | this row's own tokens], the prefix stored once.

    `module.shared_prefix_kv` holds the prefix's keys/values ([1, kv_heads, P, d]); `key`/`value`
    hold only each row's tokens after it. The prefix part runs as one attention over all rows'
    queries (its keys are read once per step, not once per row) and is merged with the row part
    through their log-sum-exps. Without a stored prefix this is plain SDPA. Where
    `fast_cpu_inference` enabled it (`module.decode_kernel`), a decode step's own part runs on
    `decode_attention`.
    """
    prefix = getattr(module, "shared_prefix_kv", None)
    b, heads, q_len, d = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    group = heads // kv_heads
    own = None
    if q_len == 1 and query.dtype == torch.float32 and getattr(module, "decode_kernel", False):
        rows = _additive_mask(attention_mask, b, 1, 1, length, query.dtype)
        own = decode_attention(query.reshape(b, kv_heads, group, d), key, value,
                               None if rows is None else rows.view(b, length), scaling)
    if prefix is None:
        if own is not None:
            return own[0].reshape(b, 1, heads, d), None
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    pk, pv = prefix
    # Query head h uses kv head h // group: pack each kv head's queries as rows (GQA, no copies
    # of keys). Row order within a kv head is (group member, position).
    packed = query.reshape(b, kv_heads, group * q_len, d)
    out_p, lse_p = _attend(packed.transpose(0, 1).reshape(1, kv_heads, b * group * q_len, d),
                           pk, pv, None, scaling)
    out_p = out_p.reshape(kv_heads, b, group * q_len, d).transpose(0, 1)
    lse_p = lse_p.reshape(kv_heads, b, group * q_len).transpose(0, 1)
    if own is None:
        if attention_mask is None and q_len > 1:
            attention_mask = torch.ones(q_len, length, dtype=torch.bool,
                                        device=query.device).tril(length - q_len)[None, None]
        mask = _additive_mask(attention_mask, b, group, q_len, length, query.dtype)
        own = _attend(packed, key, value, mask, scaling)
    out_s, lse_s = own
    # softmax over both parts = the parts' outputs weighted by their shares of the total mass.
    # The log-sum-exps are float32 whatever the model's dtype; the merge runs in float32 too.
    share = torch.sigmoid(lse_p.float() - lse_s.float())[..., None]
    out = torch.lerp(out_s.float(), out_p.float(), share).to(query.dtype)
    return out.reshape(b, heads, q_len, d).transpose(1, 2).contiguous(), None


_last_mask: list = [None, None, None]  # (boolean mask, shape key, additive form): all layers of
# one forward get the same mask object, so it is converted once


def _additive_mask(attention_mask, b: int, group: int, q_len: int, length: int, dtype):
    """The boolean mask as 0/-inf, repeated for the `group` query heads packed per kv head."""
    if attention_mask is None:
        return None
    key = (b, group, q_len, length, dtype)
    if _last_mask[0] is attention_mask and _last_mask[1] == key:
        return _last_mask[2]
    allowed = attention_mask.expand(b, 1, q_len, length)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, float("-inf"))
    mask = mask[:, :, None].expand(b, 1, group, q_len, length).reshape(
        b, 1, group * q_len, length)
    _last_mask[:] = [attention_mask, key, mask]
    return mask


AttentionInterface.register(CASCADE, cascade_attention)
AttentionMaskInterface.register(CASCADE, sdpa_mask)
