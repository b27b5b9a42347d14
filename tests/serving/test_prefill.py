"""Prefill on the tiny model: length groups, and grouped rows giving what each row gets alone."""

from __future__ import annotations

import pytest

from serving.prefill import Prefiller, length_groups
from serving.requests import GenRequest


def test_length_groups_split_only_where_padding_costs_more_than_a_call():
    assert length_groups([50, 52, 49, 51]) == [[2, 0, 3, 1]]
    groups = length_groups([300, 5, 310, 8, 6, 305], call_overhead=64)
    assert groups == [[1, 4, 3], [0, 5, 2]]
    assert length_groups([300, 5], call_overhead=10_000) == [[1, 0]]
    assert sorted(i for g in length_groups([7, 1, 90, 3, 400, 2, 2]) for i in g) == list(range(7))


def test_rows_of_very_different_lengths_prefill_in_groups_with_the_same_results(
        tiny_generator, monkeypatch):
    """Grouped prefill plus the joined cache must give each row what it gets on its own."""
    calls = []
    original = Prefiller.rows
    monkeypatch.setattr(Prefiller, "rows",
                        lambda self, own, *a: calls.append(len(own)) or original(self, own, *a))
    long_text = "a long prompt that keeps going " * 30
    requests = [GenRequest(text, max_new_tokens=6, temperature=0.0, chat=False)
                for text in ["Hi", long_text + "one", "Hello", long_text + "two and three"]]
    batched = tiny_generator.generate(requests)
    assert len(calls) == 2 and sorted(calls) == [2, 2]
    for request, [sample] in zip(requests, batched):
        [[alone]] = tiny_generator.generate([request])
        assert sample.token_ids == alone.token_ids
        assert sample.logprob_sum == pytest.approx(alone.logprob_sum, abs=1e-3)
