"""Prefill: running a batch's prompts through the model once, before decoding starts.

Three things make it cheap (README, "Benchmark"):

* a token prefix that every row of a batch starts with (the few-shot block of critique,
  revision and judge prompts, or one request's samples) is computed once, at batch size 1, and
  kept in a small LRU across batches (``Prefiller.shared_prefix``); rows attend to it without
  copying it (``serving/shared_prefix_attention.py``);
* each row's own tokens are left-padded and run in one forward pass (``Prefiller.rows``);
* rows of very different lengths run in groups of similar length (``length_groups``, an exact
  dynamic program), and the groups' caches are joined (``join_rows``).

``serving/textgen.py`` (the engine) owns one ``Prefiller`` and decodes from what it returns.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch


class Prefiller:
    """The prefill of one model, with its cache of shared prompt prefixes.

    ``forward`` is the engine's model call (it rebalances shared cores and attends to a shared
    prefix); ``min_tokens`` is the shortest prefix worth sharing (0 turns sharing off) and
    ``cache_entries`` how many prefixes stay cached.
    """

    def __init__(self, model, pad_id: int, forward: Callable, min_tokens: int,
                 cache_entries: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.forward = forward
        self.min_tokens = min_tokens
        self.cache_entries = cache_entries
        self.prefixes: OrderedDict[tuple[int, ...], list] = OrderedDict()

    def __call__(self, sequences: list[list[int]]):
        """Run every sequence's prompt once, on top of a shared cached prefix where there is one.

        Returns (KV cache of the rows' own tokens, shared prefix layers or None, own-token
        attention mask, last-position logits, next position), one row per sequence. The prefix
        stays at batch size 1 outside the cache (``serving/shared_prefix_attention.py``); each
        row's own tokens are left-padded and the mask hides the padding. Rows of very different
        lengths run in groups of similar length (``length_groups``), so that a short row does
        not pay for padding up to the longest; the groups' caches are then joined.
        """
        shared, layers = self.shared_prefix(sequences)
        prefix = layers or None
        own = [ids[shared:] for ids in sequences]
        groups = length_groups([len(ids) for ids in own])
        if len(groups) == 1:
            cache, mask, logits, next_pos = self.rows(own, shared, prefix)
        else:
            parts = [(group, *self.rows([own[i] for i in group], shared, prefix))
                     for group in groups]
            cache, mask, logits, next_pos = join_rows(parts, len(sequences), self.model.config)
        return cache, prefix, mask, logits, next_pos

    def rows(self, own: list[list[int]], shared: int, prefix):
        """One forward over the rows' own tokens, left-padded: (cache, mask, last logits, next
        position)."""
        from serving.kv_cache import growing_cache

        width = max(len(ids) for ids in own)
        input_ids = torch.full((len(own), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(own), width), dtype=torch.long)
        for i, ids in enumerate(own):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        positions = (shared + mask.cumsum(-1) - 1).clamp(min=shared)
        cache = growing_cache(self.model.config)
        out = self.forward(prefix, mask, input_ids=input_ids, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=1)
        return cache, mask, out.logits[:, -1, :], positions[:, -1] + 1

    def shared_prefix(self, sequences: list[list[int]]
                      ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Length and per-layer KV (batch 1) of a token prefix that every sequence starts with.

        Critique, revision and judge prompts repeat a long fixed block, and samples of one
        request repeat their whole prompt: computing that part once per batch, and keeping it
        across batches (a small LRU), removes most of the prefill work.
        """
        if self.min_tokens <= 0:
            return 0, []
        limit = min(len(ids) for ids in sequences) - 1  # every row keeps >= 1 token of its own
        first = sequences[0]
        common = limit
        for ids in sequences[1:]:
            k = 0
            while k < common and ids[k] == first[k]:
                k += 1
            common = k
        best_key: tuple[int, ...] = ()
        for key in self.prefixes:
            if len(best_key) < len(key) <= common and tuple(first[: len(key)]) == key:
                best_key = key
        if best_key:
            self.prefixes.move_to_end(best_key)  # the long-lived few-shot block stays cached
        if len(sequences) > 1 and common - len(best_key) >= self.min_tokens:
            return common, self._extend(best_key, tuple(first[:common]))
        if best_key:
            return len(best_key), self.prefixes[best_key]
        return 0, []

    def _extend(self, base: tuple[int, ...], key: tuple[int, ...]) -> list:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for index, (keys, values) in enumerate(self.prefixes.get(base, [])):
            cache.update(keys, values, index)
        extra = torch.tensor([key[len(base):]])
        positions = torch.arange(len(base), len(key))[None, :]
        self.model(input_ids=extra, attention_mask=torch.ones((1, len(key)), dtype=torch.long),
                   position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefixes[key] = layers
        while len(self.prefixes) > self.cache_entries:
            self.prefixes.popitem(last=False)
        return layers


# A prefill call costs about this many padded tokens' work beyond its tokens (fixed per-layer
# overheads, smaller matrix products), so splitting rows into length groups must save more.
PREFILL_CALL_OVERHEAD_TOKENS = 64


def length_groups(lengths: list[int],
                  call_overhead: int = PREFILL_CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Row indices split into groups of similar length, for separate left-padded prefills.

    Minimises padded tokens (rows x longest, summed over groups) plus ``call_overhead`` per
    group, exactly, by dynamic programming over the rows sorted by length.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0] + [None] * len(order)  # best[j]: cost of grouping the j shortest rows
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        for begin in range(end):
            cost = best[begin] + (end - begin) * longest + call_overhead
            if best[end] is None or cost < best[end]:
                best[end], start[end] = cost, begin
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[start[end]:end])
        end = start[end]
    return groups[::-1]


def join_rows(parts, rows: int, config):
    """One left-padded batch, in the original row order, from groups prefilled separately.

    ``parts`` holds (row indices, cache, mask, logits, next position) per group; returns the
    joined (cache, mask, logits, next position). Padding keys and values are zeros, hidden by
    the mask like any other padding.
    """
    from serving.kv_cache import growing_cache

    width = max(mask.shape[1] for _, _, mask, _, _ in parts)
    indices = [torch.tensor(group) for group, *_ in parts]
    joined = growing_cache(config)
    for layer_index in range(len(parts[0][1].layers)):
        tensors = []
        for kind in ("keys", "values"):
            sample = getattr(parts[0][1].layers[layer_index], kind)
            full = sample.new_zeros((rows, sample.shape[1], width, sample.shape[3]))
            for index, (_, cache, mask, _, _) in zip(indices, parts):
                full[index, :, width - mask.shape[1]:] = getattr(cache.layers[layer_index], kind)
            tensors.append(full)
        joined.update(tensors[0], tensors[1], layer_index)
    first_logits = parts[0][3]
    mask = torch.zeros((rows, width), dtype=torch.long)
    logits = first_logits.new_empty((rows, first_logits.shape[-1]))
    next_pos = torch.zeros(rows, dtype=torch.long)
    for index, (_, _, group_mask, group_logits, group_next) in zip(indices, parts):
        mask[index, width - group_mask.shape[1]:] = group_mask
        logits[index] = group_logits
        next_pos[index] = group_next
    return joined, mask, logits, next_pos
