"""Faster float32 CPU inference for the transformers backend's generate and score.

Three swaps, active only inside `fast_cpu_inference(model)` (both callers run in inference mode):
- `nn.Linear` calls of at most `PACKED_MAX_ROWS` rows (decode steps, the output head) run on a
  oneDNN copy of the weight prepacked once into its blocked layout instead of MKL sgemm on the
  plain weight (generation 1.19x faster on the project's AVX2 CPU; docs/performance.md).
- SwiGLU MLPs apply SiLU and the gate product in place, which saves two full-size temporaries per
  layer in prefill.
- Decode attention (one new token per row over its own cached keys/values) runs on the numba
  kernel below instead of torch's CPU flash kernel, which reaches only ~11 GB/s on these small
  per-row problems; see `decode_attention`.
Numerics change only by float rounding. Weights are packed on entering the block; weights edited
in place since (training) are repacked then: the cache checks the tensor's identity and version
counter.
"""

from __future__ import annotations

import contextlib
import weakref
from functools import partial

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic
from torch import nn

PACKED_MAX_ROWS = 256  # larger calls (prefill windows) run as fast on plain MKL sgemm
ROWS_HINT = 64  # oneDNN picks its blocking for this many rows: a full decode batch
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Linear -> (weight, version, packed)


def prepack_supported(model: nn.Module) -> bool:
    weight = next(model.parameters())
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _packed_weight(module: nn.Linear) -> torch.Tensor:
    weight = module.weight
    entry = _PACKED.get(module)
    if entry is None or entry[0] is not weight or entry[1] != weight._version:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)
        entry = (weight, weight._version, packed)
        _PACKED[module] = entry
    return entry[2]


def _packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, packed: torch.Tensor,
                   x: torch.Tensor) -> torch.Tensor:
    if x.numel() > PACKED_MAX_ROWS * x.shape[-1] or x.dtype != torch.float32:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _is_swiglu(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    return (all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj"))
            and (isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"))


def _swiglu_in_place(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate = F.silu(module.gate_proj(x), inplace=True)
    return module.down_proj(gate.mul_(module.up_proj(x)))


# Reassociation lets LLVM vectorize the dot products; no `fastmath=True`, which would also assume
# no infinities while the masks hold -inf.
_FASTMATH = {"reassoc", "contract", "arcp", "nsz"}


@intrinsic
def _float_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@numba.njit(fastmath=_FASTMATH, inline="always")
def _exp_nonpositive(x):
    """exp(x) for x <= 0 within ~1 ulp (Cephes expf), 0 below -87; unlike a call to libm's expf
    it vectorizes."""
    if x < np.float32(-87.0):
        return np.float32(0.0)
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)  # x - n ln 2, in two parts
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))  # p * 2**n


@numba.njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _decode_attention(q, k, v, mask, length, scale, out, lse):
    """Softmax attention of q [R, G4, D] over k, v [R, capacity, D] (their first `length`
    positions) with additive mask [rows, length]; writes out [R, G4, D] and lse [R, G4].

    R runs over (row, kv head) pairs, split over the threads; G4, a multiple of 4, over the query
    heads of one kv head, four per pass so that every key and value is read once for all four.
    """
    pairs, g4, d_count = q.shape
    heads = pairs // mask.shape[0]
    for bh in prange(pairs):
        keys, values, mrow = k[bh], v[bh], mask[bh // heads]
        s = np.empty((4, length), np.float32)
        total = np.empty(4, np.float32)
        for g in range(0, g4, 4):
            q0, q1, q2, q3 = q[bh, g], q[bh, g + 1], q[bh, g + 2], q[bh, g + 3]
            for pos in range(length):
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for d in range(d_count):
                    x = keys[pos, d]
                    a0 += q0[d] * x
                    a1 += q1[d] * x
                    a2 += q2[d] * x
                    a3 += q3[d] * x
                m = mrow[pos]
                s[0, pos] = a0 * scale + m
                s[1, pos] = a1 * scale + m
                s[2, pos] = a2 * scale + m
                s[3, pos] = a3 * scale + m
            for r in range(4):
                row = s[r]
                top = row[0]
                for pos in range(1, length):
                    top = max(top, row[pos])
                tot = np.float32(0.0)
                for pos in range(length):
                    e = _exp_nonpositive(row[pos] - top)
                    row[pos] = e
                    tot += e
                total[r] = tot
                lse[bh, g + r] = top + np.log(tot)
            o0 = np.zeros(d_count, np.float32)
            o1 = np.zeros(d_count, np.float32)
            o2 = np.zeros(d_count, np.float32)
            o3 = np.zeros(d_count, np.float32)
            for pos in range(length):
                p0, p1, p2, p3 = s[0, pos], s[1, pos], s[2, pos], s[3, pos]
                for d in range(d_count):
                    x = values[pos, d]
                    o0[d] += p0 * x
                    o1[d] += p1 * x
                    o2[d] += p2 * x
                    o3[d] += p3 * x
            out[bh, g] = o0 / total[0]
            out[bh, g + 1] = o1 / total[1]
            out[bh, g + 2] = o2 / total[2]
            out[bh, g + 3] = o3 / total[3]


def _buffer_rows(x: torch.Tensor) -> np.ndarray | None:
    """[rows, heads, length, D], a prefix of a contiguous [rows, heads, capacity, D] buffer, as that
    buffer's [rows*heads, capacity, D] array (no copy); None for any other layout."""
    rows, heads, _, d = x.shape
    capacity = x.stride(1) // d
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.stride() != (
            heads * capacity * d, capacity * d, d, 1):
        return None
    if x.storage_offset() + rows * heads * capacity * d > x.untyped_storage().nbytes() // 4:
        return None  # a view that starts inside the buffer: the kernel would read past its end
    return x.as_strided((rows * heads, capacity, d), (capacity * d, d, 1)).numpy()


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     mask: torch.Tensor | None, scale: float | None):
    """Softmax attention of one new token per row over that row's own cached keys and values.

    query [rows, kv_heads, G, D] holds the G query heads that share each kv head; key/value
    [rows, kv_heads, length, D] are views of a contiguous cache buffer; mask [rows, length] is
    additive (0 / -inf) or None. Returns (output [rows, kv_heads, G, D], log-sum-exp
    [rows, kv_heads, G]), or None when the tensors do not fit the kernel (the caller then uses
    torch's attention).

    The kernel reads each key and value from memory once for all G heads and does the softmax in
    between in registers and cache; torch's flash kernel reaches ~11 GB/s on these small per-row
    problems (docs/performance.md).
    """
    k, v = _buffer_rows(key), _buffer_rows(value)
    if k is None or v is None or query.dtype != torch.float32:
        return None
    rows, kv_heads, group, d = query.shape
    length = key.shape[2]
    g4 = -(-group // 4) * 4
    q = query.new_zeros(rows * kv_heads, g4, d)
    q[:, :group] = query.reshape(rows * kv_heads, group, d)
    if mask is None:
        mask = query.new_zeros(rows, length)
    out = query.new_empty(rows * kv_heads, g4, d)
    lse = query.new_empty(rows * kv_heads, g4)
    _decode_attention(q.numpy(), k, v, mask.contiguous().numpy(), length,
                      np.float32(scale if scale is not None else d ** -0.5), out.numpy(),
                      lse.numpy())
    return (out[:, :group].reshape(rows, kv_heads, group, d),
            lse[:, :group].reshape(rows, kv_heads, group))


def is_attention_module(module: nn.Module) -> bool:
    """A transformers attention layer (it knows its layer index and its GQA group size)."""
    return hasattr(module, "layer_idx") and hasattr(module, "num_key_value_groups")


@contextlib.contextmanager
def fast_cpu_inference(model: nn.Module, enabled: bool = True):
    """Within the block, `model`'s linears, SwiGLU MLPs and decode attention use the kernels above
    (no-op off CPU float32 or with `enabled=False`)."""
    if not enabled or not prepack_supported(model):
        yield
        return
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    patched, flagged = [], []
    for module in model.modules():
        if is_attention_module(module):
            module.decode_kernel = True  # read by the backend's attention function
            flagged.append(module)
        elif type(module) is nn.Linear:
            module.forward = partial(_packed_linear, module.weight, module.bias,
                                     _packed_weight(module))
            patched.append(module)
        elif _is_swiglu(module):
            module.forward = partial(_swiglu_in_place, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
        for module in flagged:
            del module.decode_kernel
