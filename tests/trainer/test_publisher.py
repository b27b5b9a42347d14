"""The trainer's sends against real Kafka: RL samples on ``rl-samples`` keyed by prompt, sample
and round, dead letters and the policy announcement through the same acknowledged producer."""

from __future__ import annotations

import uuid

import pytest

from streams import admin, records, topics
from streams.settings import StreamSettings
from trainer.publisher import StackPublisher

pytestmark = pytest.mark.integration


def _read(settings: StreamSettings, short: str, count: int) -> list:
    """The first ``count`` messages of a topic (all partitions), as (key, record dict)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topics.topic_name(short, settings),
                             bootstrap_servers=settings.kafka_address, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    try:
        got = []
        for message in consumer:
            got.append((message.key.decode(), message.value))
            if len(got) == count:
                break
        return got
    finally:
        consumer.close()


def test_samples_dead_letters_and_the_announcement_reach_their_topics(kafka_redis, tmp_path):
    run = uuid.uuid4().hex[:8]
    settings = StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix=f"pub{run}.")
    admin.ensure_topics(settings)
    publisher = StackPublisher(kafka_redis, settings)
    samples = [records.stamp(records.RLSampleRecord(
        prompt_id="h1", prompt="How do I hotwire a car?", kind="harmful", answer=answer,
        sample=i, reward=reward, advantage=reward - 0.5, completion_tokens=5, policy_version=2,
        reward_version=1, trainer_round=7)) for i, (answer, reward) in
        enumerate((("I can't help with that.", 0.9), ("Open the steering column.", 0.1)))]

    publisher.send_samples(samples)
    publisher.send_samples([])  # an RL round with nothing sampled sends nothing
    publisher.dead_letter([records.DeadLetterRecord(stage="trainer", reason="bad", key="k",
                                                    offset=3, payload="{")])
    publisher.announce(2, tmp_path, {"loss/rloo": 0.5})

    got = dict(_read(settings, topics.RL_SAMPLES, 2))
    assert set(got) == {"h1/0/7", "h1/1/7"}
    back = records.decode(records.RLSampleRecord, got["h1/1/7"])
    assert records.to_dict(back) == records.to_dict(samples[1]) and back.created_at > 0
    [(key, value)] = _read(settings, topics.DEAD_LETTER, 1)
    assert key == "trainer:k/3" and records.decode(records.DeadLetterRecord, value).reason == "bad"
    [(key, value)] = _read(settings, topics.POLICY_VERSIONS, 1)
    assert key == "2"
    assert records.decode(records.PolicyVersionRecord, value).metrics_json == '{"loss/rloo": 0.5}'
