"""Topic names, partition counts and stream settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import StackSettings
from streams.settings import StreamSettings
from streams.topics import TOPICS, all_topics, partitions_for, topic_name


def test_default_names_and_partitions():
    s = StreamSettings(kafka_bootstrap=None)
    names = {t.short: t.name for t in all_topics(s)}
    assert names == {short: f"cai.{short}" for short in TOPICS}
    assert set(TOPICS) == {"prompts", "critique", "revise", "compare", "sft", "preferences",
                           "policy-versions", "dead-letter", "rl-samples"}
    assert names["rl-samples"] == "cai.rl-samples"
    assert partitions_for("prompts", s) == 4 and partitions_for("policy-versions", s) == 1


def test_prefix_and_overrides(monkeypatch):
    monkeypatch.setenv("CAI_TOPIC_PREFIX", "exp1.")
    monkeypatch.setenv("CAI_PARTITIONS", "2")
    monkeypatch.setenv("CAI_TOPIC_PARTITIONS", '{"sft": 3}')
    s = StreamSettings()
    assert topic_name("sft", s) == "exp1.sft"
    assert partitions_for("sft", s) == 3 and partitions_for("critique", s) == 2


def test_bootstrap_defaults_to_the_stack(monkeypatch):
    monkeypatch.delenv("CAI_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("CAI_KAFKA_PORT", "29092")
    assert StreamSettings().kafka_address == StackSettings().kafka_address == "127.0.0.1:29092"
    assert StreamSettings(kafka_bootstrap="k:1").kafka_address == "k:1"


@pytest.mark.parametrize("kwargs, words", [
    ({"partitions": 0}, "at least 1"), ({"topic_partitions": {"nope": 1}}, "unknown topic"),
    ({"topic_prefix": "bad prefix/"}, "may only hold"),
])
def test_invalid_settings_name_the_problem(kwargs, words):
    with pytest.raises(ValidationError, match=words):
        StreamSettings(**kwargs)


def test_unknown_topic_name():
    with pytest.raises(ValueError, match="unknown topic 'prompt'"):
        topic_name("prompt", StreamSettings())
