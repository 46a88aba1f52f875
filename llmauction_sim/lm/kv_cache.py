"""KV caches for the transformers backend's decode loop: buffers sized for the whole generation
up front, row windows for prefilling a few rows at a time, and the compaction that drops finished
rows while moving few of the others."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that writes into a buffer sized for the whole generation up front."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def allocate(self, rows: int, heads: int, head_dim: int, dtype, device) -> None:
        shape = (rows, heads, self.capacity, head_dim)
        self._k = torch.empty(shape, dtype=dtype, device=device)
        self._v = torch.empty(shape, dtype=dtype, device=device)
        self.device = device
        self.is_initialized = True
        self._set_views()

    def _set_views(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} > capacity {self.capacity}")
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self.length = end
        self._set_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if not self.is_initialized:
            return
        n = len(indices)
        moved = (indices != torch.arange(n, device=indices.device)).nonzero().squeeze(1)
        if n <= self._k.shape[0] and bool((indices[moved] >= n).all()):
            # A compaction (see `compaction_order`): rows already in place stay; only the rows
            # moved into the holes are copied.
            self._k[moved] = self._k[indices[moved]]
            self._v[moved] = self._v[indices[moved]]
            self._k, self._v = self._k[:n], self._v[:n]
        else:
            self._k, self._v = self._k[indices], self._v[indices]
        self._set_views()

    def load_prefix(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Fill positions [0, P) of every row with one shared prefix (batch dim 1)."""
        p = keys.shape[2]
        self._k[:, :, :p] = keys
        self._v[:, :, :p] = values
        self.length = p
        self._set_views()

    def advance(self, tokens: int) -> None:
        """Mark `tokens` more positions as filled (after row windows wrote them)."""
        self.length += tokens
        self._set_views()


class RowWindow(DynamicLayer):
    """Rows [start, stop) of a PreallocatedLayer, for prefilling a batch a few rows at a time.

    A window narrower than the batch's (left-padded) width writes `offset` positions to the right
    of the parent's current length; the positions it skips are zeroed (masked, and finite so that
    masked attention stays finite). Only `advance` moves the parent's length.
    """

    def __init__(self, parent: PreallocatedLayer, rows: slice, offset: int = 0):
        super().__init__()
        self.parent, self.rows, self.offset = parent, rows, offset
        self.is_initialized = True
        if offset:
            gap = slice(parent.length, parent.length + offset)
            parent._k[rows, :, gap] = 0
            parent._v[rows, :, gap] = 0

    def update(self, key_states, value_states, *args, **kwargs):
        p = self.parent
        start = p.length + self.offset
        end = start + key_states.shape[-2]
        p._k[self.rows, :, start:end] = key_states
        p._v[self.rows, :, start:end] = value_states
        return p._k[self.rows, :, :end], p._v[self.rows, :, :end]

    def get_seq_length(self) -> int:
        return self.parent.length + self.offset


def new_cache(num_layers: int, capacity: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [PreallocatedLayer(capacity) for _ in range(num_layers)]
    return cache


def compaction_order(live: torch.Tensor) -> torch.Tensor:
    """Indices of the live rows, ordered so that those among the first `live.sum()` positions keep
    their place and the rest fill the holes: dropping finished rows then moves few rows."""
    n = int(live.sum())
    order = torch.arange(n, device=live.device)
    order[(~live[:n]).nonzero().squeeze(1)] = live[n:].nonzero().squeeze(1) + n
    return order

