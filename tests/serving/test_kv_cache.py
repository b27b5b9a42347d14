"""GrowingLayer holds exactly what the library's concatenating DynamicLayer holds."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from serving import kv_cache
from serving.kv_cache import GrowingLayer


def test_appends_selections_and_growth_match_the_concatenating_layer(monkeypatch):
    monkeypatch.setattr(kv_cache, "HEADROOM_TOKENS", 3)  # force several reallocations
    torch.manual_seed(0)
    growing, plain = GrowingLayer(), DynamicLayer()
    rows = 4
    for step, tokens in enumerate([5, 1, 1, 4, 1, 1, 9, 1]):
        if step == 4:  # a row finishes and leaves the batch
            index = torch.tensor([0, 2, 3])
            growing.batch_select_indices(index)
            plain.batch_select_indices(index)
            rows = 3
        keys, values = torch.randn(rows, 2, tokens, 3), torch.randn(rows, 2, tokens, 3)
        got = growing.update(keys, values)
        expected = plain.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert growing.get_seq_length() == plain.get_seq_length() == 23
    growing.crop(-2)
    assert growing.get_seq_length() == 21 and torch.equal(growing.keys, plain.keys[:, :, :21])


def test_a_growing_cache_generates_what_the_library_cache_generates(tiny_generator):
    from transformers import DynamicCache

    model = tiny_generator.model
    ids = torch.tensor([[5, 9, 14, 3, 7, 2]])
    outputs = []
    for cache in (kv_cache.growing_cache(model.config), DynamicCache(config=model.config)):
        with torch.inference_mode():
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            tokens = []
            for _ in range(6):
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(int(token))
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
        outputs.append((tokens, out.logits[0, -1]))
    assert outputs[0][0] == outputs[1][0]
    assert torch.allclose(outputs[0][1], outputs[1][1], atol=1e-5)
    layers = kv_cache.growing_cache(model.config).layers
    assert any(isinstance(layer, GrowingLayer) for layer in layers)
