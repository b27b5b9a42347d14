"""A key/value cache that appends in place instead of concatenating at every step.

transformers' ``DynamicLayer`` grows its keys and values with ``torch.cat``, so each decoding
step copies the whole cache of every layer: for a 16-row batch with a few hundred tokens per
row that copy was more than half of a step's time on a CPU. ``GrowingLayer`` keeps buffers
with spare room (doubling when full) and exposes ``keys``/``values`` as views of the filled
part, so a step writes only its new token. Everything else behaves like ``DynamicLayer``.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# Room for this many more tokens is reserved when a layer's buffer is (re)allocated, so a
# typical generation never reallocates after its prefill.
HEADROOM_TOKENS = 256


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose storage has spare capacity along the sequence axis."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        needed = self._length + new
        if self._key_buffer is None or needed > self._key_buffer.shape[-2]:
            capacity = max(needed + HEADROOM_TOKENS, 2 * self._length)
            self._key_buffer = self._grow(self._key_buffer, key_states, capacity)
            self._value_buffer = self._grow(self._value_buffer, value_states, capacity)
        self._key_buffer[:, :, self._length:needed] = key_states
        self._value_buffer[:, :, self._length:needed] = value_states
        self._length = needed
        self._expose()
        return self.keys, self.values

    def _grow(self, buffer: torch.Tensor | None, sample: torch.Tensor,
              capacity: int) -> torch.Tensor:
        rows, heads, _, dim = sample.shape
        grown = sample.new_empty((rows, heads, capacity, dim))
        if buffer is not None and self._length:
            grown[:, :, :self._length] = buffer[:, :, :self._length]
        return grown

    def _expose(self) -> None:
        self.keys = self._key_buffer[:, :, :self._length]
        self.values = self._value_buffer[:, :, :self._length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._length:
            self._key_buffer = self._key_buffer.index_select(0, indices)
            self._value_buffer = self._value_buffer.index_select(0, indices)
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._length:
            self._key_buffer = self._key_buffer.repeat_interleave(repeats, dim=0)
            self._value_buffer = self._value_buffer.repeat_interleave(repeats, dim=0)
            self._expose()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        # As DynamicLayer: a negative value removes that many tokens; a positive one (the older
        # meaning) is the length to keep.
        keep = (min(self._length, tokens_to_remove) if tokens_to_remove > 0
                else self._length + tokens_to_remove)
        self._length = max(0, keep)
        if self._key_buffer is not None:
            self._expose()


def growing_cache(config) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers append in place.

    Layers of other kinds (sliding-window, linear attention) keep the library's own class.
    """
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache
