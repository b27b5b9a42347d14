"""The shared-prefix attention equals ordinary masked attention over prefix + own tokens."""

from __future__ import annotations

import types

import pytest
import torch

from serving.shared_prefix_attention import SharedPrefix, shared_prefix_attention


def _reference(query, prefix_k, prefix_v, own_k, own_v, own_mask):
    """Plain attention with the prefix copied into every row, as a KV cache would hold it."""
    rows, heads, queries, dim = query.shape
    group = heads // own_k.shape[1]
    keys = torch.cat([prefix_k.expand(rows, -1, -1, -1), own_k],
                     dim=2).repeat_interleave(group, dim=1)
    values = torch.cat([prefix_v.expand(rows, -1, -1, -1), own_v],
                       dim=2).repeat_interleave(group, dim=1)
    prefix_len, own_len = prefix_k.shape[2], own_k.shape[2]
    query_pos = torch.arange(own_len - queries, own_len)[:, None]
    own_allowed = own_mask.bool()[:, None, :] & (
        torch.arange(own_len)[None, None, :] <= query_pos[None])
    allowed = torch.cat([torch.ones(rows, queries, prefix_len, dtype=torch.bool), own_allowed],
                        dim=2)
    scores = query @ keys.transpose(2, 3) / dim ** 0.5
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ values).transpose(1, 2)


@pytest.mark.parametrize("queries", [1, 5])
def test_matches_attention_over_the_copied_prefix(queries):
    torch.manual_seed(0)
    rows, kv_heads, group, dim, prefix_len, own_len = 3, 2, 3, 8, 11, 7
    query = torch.randn(rows, kv_heads * group, queries, dim)
    prefix_k, prefix_v = torch.randn(1, kv_heads, prefix_len,
                                     dim), torch.randn(1, kv_heads, prefix_len, dim)
    own_k, own_v = torch.randn(rows, kv_heads, own_len,
                               dim), torch.randn(rows, kv_heads, own_len, dim)
    own_mask = torch.ones(rows, own_len, dtype=torch.long)
    own_mask[1, :3] = 0  # left padding
    own_mask[2, :6] = 0  # only the last own token is real
    layer = types.SimpleNamespace(layer_idx=0)

    got, _ = shared_prefix_attention(layer, query, own_k, own_v, None, scaling=dim ** -0.5,
                                     shared_prefix=SharedPrefix([(prefix_k, prefix_v)], own_mask))

    expected = _reference(query, prefix_k, prefix_v, own_k, own_v, own_mask)
    # Query positions that are themselves padding see only the prefix; compare the real ones.
    real = own_mask[:, own_len - queries:].bool()
    assert got.shape == expected.shape == (rows, queries, kv_heads * group, dim)
    assert torch.isfinite(got).all()
    assert torch.allclose(got[real], expected[real], atol=1e-5)


def test_a_model_that_ignores_the_prefix_keeps_its_attention_and_shares_nothing(
        cache_dir, monkeypatch, caplog):
    from serving import shared_prefix_attention
    from serving.models import resolve
    from serving.requests import GenRequest
    from serving.textgen import TextGenerator

    monkeypatch.setattr(shared_prefix_attention, "_same_logits", lambda model, cache_class: False)
    generator = TextGenerator(resolve("tiny", cache_dir), threads=1, prefix_min_tokens=8)

    assert generator.prefill.min_tokens == 0
    assert generator.model.config._attn_implementation != shared_prefix_attention.ATTENTION_NAME
    assert "prefixes are not shared" in caplog.text
    few_shot = "Human: an example\n\nAssistant: an answer\n\n" * 5
    generator.generate([GenRequest(few_shot + f"Human: q{i}", max_new_tokens=2,
                                   chat=False) for i in range(2)])
    assert not generator.prefill.prefixes


def test_the_check_accepts_a_llama_model(cache_dir):
    from transformers import AutoModelForCausalLM

    from serving.models import resolve
    from serving.shared_prefix_attention import ATTENTION_NAME, install

    model = AutoModelForCausalLM.from_pretrained(resolve("tiny", cache_dir))
    assert install(model)
    assert model.config._attn_implementation == ATTENTION_NAME
