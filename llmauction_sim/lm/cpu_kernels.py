"""Faster float32 CPU inference for the transformers backend's generate and score.

Two swaps, active only inside `fast_cpu_inference(model)` (both callers run in inference mode):
- `nn.Linear` calls of at most `PACKED_MAX_ROWS` rows (decode steps, the output head) run on a
  oneDNN copy of the weight prepacked once into its blocked layout instead of MKL sgemm on the
  plain weight (generation 1.19x faster on the project's AVX2 CPU; docs/performance.md).
- SwiGLU MLPs apply SiLU and the gate product in place, which saves two full-size temporaries per
  layer in prefill.
Numerics change only by float rounding. Weights are packed on entering the block; weights edited
in place since (training) are repacked then: the cache checks the tensor's identity and version
counter.
"""

from __future__ import annotations

import contextlib
import weakref
from functools import partial

import torch
import torch.nn.functional as F
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


@contextlib.contextmanager
def fast_cpu_inference(model: nn.Module, enabled: bool = True):
    """Within the block, `model`'s linears and SwiGLU MLPs use the kernels above (no-op off CPU
    float32 or with `enabled=False`)."""
    if not enabled or not prepack_supported(model):
        yield
        return
    patched = []
    for module in model.modules():
        if type(module) is nn.Linear:
            module.forward = partial(_packed_linear, module.weight, module.bias,
                                     _packed_weight(module))
        elif _is_swiglu(module):
            module.forward = partial(_swiglu_in_place, module)
        else:
            continue
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward
