"""Attention over one shared prompt prefix plus each row's own tokens, without copying the prefix.

Critique, revision and judge prompts open with the same few-shot block (hundreds of tokens),
and a batch holds many such prompts. Copying that block's keys and values into every row of
the KV cache makes each decoding step read (and, as the cache grows by concatenation, copy)
``rows x prefix`` entries: on a CPU that dominated the step and made a 16-row batch with an
865-token prefix about 4x slower than the same batch with short prompts.

Here the prefix's keys and values stay at batch size 1, outside the KV cache. Each layer
attends every row's queries to the prefix in one matrix product (the rows play the part of
extra query positions), attends each row to its own cached tokens under its own mask, and
merges the two softmax parts exactly with their log-sum-exp weights (the "cascade" split of
attention). The result equals ordinary attention over ``prefix + own tokens``. That split is
for decoding (one query per row); a prefill call, with many queries per row, copies the
prefix into the batch once and runs the fused SDPA kernel instead, which is faster there.

The engine turns it on per call by passing ``shared_prefix=SharedPrefix(...)`` to the model;
without it the layer runs the library's SDPA attention, so the model behaves as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ATTENTION_NAME = "cai_shared_prefix"


@dataclass
class SharedPrefix:
    """What one forward call needs: the prefix per layer and the rows' own-token mask.

    ``layers[i]`` is layer i's (keys, values), each (1, kv_heads, prefix_len, head_dim).
    ``own_mask`` is (rows, own_len) with 1 where a row's own token is real, 0 for padding;
    ``own_len`` counts the tokens in the KV cache after this call's tokens are added.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    own_mask: torch.Tensor


def _allowed(own_mask: torch.Tensor, queries: int) -> torch.Tensor:
    """(rows, 1, queries, own_len) bool: real own tokens, causally before or at each query."""
    own_len = own_mask.shape[1]
    query_pos = torch.arange(own_len - queries, own_len)[:, None]
    causal = torch.arange(own_len)[None, :] <= query_pos
    return own_mask.bool()[:, None, None, :] & causal[None, None]


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            shared_prefix: SharedPrefix | None = None, **kwargs):
    """Drop-in attention function (transformers' AttentionInterface signature)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    prefix_keys, prefix_values = shared_prefix.layers[module.layer_idx]
    rows, heads, queries, dim = query.shape
    if queries > 1:
        return _prefill_attention(query, key, value, prefix_keys, prefix_values,
                                  shared_prefix.own_mask, scaling)
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.float().reshape(rows, kv_heads, group * queries, dim)

    # Prefix part: all rows' queries against the single copy of the prefix.
    stacked = q.transpose(0, 1).reshape(kv_heads, rows * group * queries, dim)
    prefix_scores = torch.matmul(stacked, prefix_keys[0].float().transpose(1, 2)) * scale
    prefix_lse = torch.logsumexp(prefix_scores, dim=-1, keepdim=True)
    prefix_out = torch.matmul(torch.softmax(prefix_scores, dim=-1), prefix_values[0].float())
    prefix_out = prefix_out.reshape(kv_heads, rows, group * queries, dim).transpose(0, 1)
    prefix_lse = prefix_lse.reshape(kv_heads, rows, group * queries, 1).transpose(0, 1)

    # Own part: each row against its own cached tokens (padding and future tokens masked).
    # own_scores: (rows, kv_heads, group*queries, own)
    own_scores = torch.matmul(q, key.float().transpose(2, 3)) * scale
    allowed = _allowed(shared_prefix.own_mask, queries)[:, :, None]
    allowed = allowed.expand(rows, 1, group, queries, -1)
    allowed = allowed.reshape(rows, 1, group * queries, -1)
    own_scores = own_scores.masked_fill(~allowed, float("-inf"))
    own_lse = torch.logsumexp(own_scores, dim=-1, keepdim=True)
    own_out = torch.matmul(torch.softmax(own_scores, dim=-1).nan_to_num(0.0), value.float())

    # Exact merge of the two partial softmaxes; a row with no own tokens yet gets weight 0 there.
    top = torch.maximum(prefix_lse, own_lse)
    prefix_weight = torch.exp(prefix_lse - top)
    own_weight = torch.exp(own_lse - top)
    merged = (prefix_out * prefix_weight + own_out * own_weight) / (prefix_weight + own_weight)
    merged = merged.reshape(rows, heads, queries, dim).to(query.dtype)
    return merged.transpose(1, 2).contiguous(), None


def _prefill_attention(query, key, value, prefix_keys, prefix_values, own_mask, scaling):
    """Many queries per row (prefill): fused SDPA over the prefix expanded into every row.

    Here the work is ``rows x queries x (prefix + own)`` and the copy of the prefix is only
    ``rows x prefix``, so copying it once is cheap, and the fused kernel is about 4x faster
    on a CPU than the two-part split with its explicit score matrices.
    """
    import torch.nn.functional as F

    rows, _, queries, _ = query.shape
    prefix_len = prefix_keys.shape[2]
    keys = torch.cat([prefix_keys.expand(rows, -1, -1, -1), key], dim=2)
    values = torch.cat([prefix_values.expand(rows, -1, -1, -1), value], dim=2)
    allowed = torch.cat([torch.ones((rows, 1, queries, prefix_len), dtype=torch.bool),
                         _allowed(own_mask, queries)], dim=-1)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=allowed, scale=scaling,
                                         enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def install(model) -> bool:
    """Switch ``model`` to this attention (SDPA masks kept) if it gives the same logits.

    An architecture whose layers do not pass extra keyword arguments down to the attention
    function would silently ignore the prefix; a three-token check catches that, and then the
    model is left as it was and False is returned (the caller stops sharing prefixes).
    """
    from transformers import AttentionInterface, DynamicCache
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation(ATTENTION_NAME)
        if _same_logits(model, DynamicCache):
            return True
    except (ValueError, TypeError, KeyError, RuntimeError, AttributeError):
        pass
    model.set_attn_implementation(previous)
    return False


@torch.inference_mode()
def _same_logits(model, cache_class) -> bool:
    ids = torch.tensor([[1, 2, 3, 4]]) % model.config.vocab_size
    whole = model(input_ids=ids).logits[0, -1].float()
    cache = cache_class(config=model.config)
    model(input_ids=ids[:, :2], past_key_values=cache, use_cache=True)
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    own_mask = torch.ones((1, 2), dtype=torch.long)
    split = model(input_ids=ids[:, 2:], attention_mask=own_mask,
                  position_ids=torch.tensor([[2, 3]]),
                  past_key_values=cache_class(config=model.config), use_cache=True,
                  shared_prefix=SharedPrefix(layers, own_mask)).logits[0, -1].float()
    return bool(torch.allclose(whole, split, atol=1e-2 * float(whole.abs().max()) + 1e-3))
