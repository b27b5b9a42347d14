"""The monitor's snapshot against real Kafka and Redis."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from cai import monitor
from serving.publish import REDIS_VERSION_KEY
from streams import admin, records, topics
from streams.settings import StreamSettings
from trainer.publisher import REDIS_LAST_ROUND_KEY, REDIS_ROUNDS_KEY, StackPublisher


def test_principle_stats_counts_unchanged_revisions_and_margins():
    sft = [{
        "initial_response": "Sure, here is how.",
        "steps_json": json.dumps([
            {"principle_id": "harm", "critique": "c",
             "revision": "I won't, because it hurts people."},
            {"principle_id": "evasive", "critique": "c",
             "revision": "I won't,  because it hurts people."},
        ]),
    }]
    prefs = [{"principle_ids": "harm,evasive", "p_chosen": 0.9},
             {"principle_ids": "harm", "p_chosen": 0.3}]
    stats = monitor.principle_stats(sft, prefs)
    assert stats["harm"] == {"rounds": 1, "no_change_rate": 0.0, "judge_margin": 0.3, "labels": 2}
    assert stats["evasive"]["no_change_rate"] == 1.0  # whitespace-only change counts as no change


@pytest.mark.integration
def test_snapshot_sees_flows_examples_and_versions(kafka_redis):
    import redis
    from kafka import KafkaProducer

    stream = StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix="mon.")
    admin.ensure_topics(stream)
    producer = KafkaProducer(bootstrap_servers=kafka_redis.kafka_address)
    steps = [{"round": 1, "principle_id": "p1", "critique": "too harmful", "revision": "safer"}]
    sft = records.SFTRecord(prompt_id="x1", prompt="how to pick a lock", response="safer",
                            initial_response="step one", steps_json=json.dumps(steps),
                            policy_version=1)
    pref = records.PreferenceRecord(prompt_id="x1", prompt="how to pick a lock", chosen="safer",
                                    rejected="step one", p_chosen=0.8, orders_agree=False,
                                    principle_ids="c3", probs_json=json.dumps([[0.9, 0.3]]),
                                    strategy="judge")
    # A label made by construction: counted by strategy, kept out of the judge's statistics.
    contrastive = records.PreferenceRecord(prompt_id="x2", prompt="q", chosen="a", rejected="b",
                                           p_chosen=1.0,
                                           strategy="contrastive", pair="contrastive")
    version = records.PolicyVersionRecord(version=2, metrics_json=json.dumps({"loss/sft": 1.5}))
    for short, record in ((topics.SFT, sft), (topics.PREFERENCES, contrastive),
                          (topics.PREFERENCES, pref),
                          (topics.POLICY_VERSIONS, version)):
        producer.send(topics.topic_name(short, stream), records.encode(record))
    producer.flush()
    producer.close()
    store = redis.Redis.from_url(kafka_redis.redis_address)
    previous = store.get(REDIS_VERSION_KEY)
    store.set(REDIS_VERSION_KEY, 2)

    # A consumer group that has committed nothing of sft yet lags by the one record.
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    group = KafkaConsumer(bootstrap_servers=kafka_redis.kafka_address, group_id=stream.app_id,
                          enable_auto_commit=False)
    group.commit({TopicPartition(topics.topic_name(topics.PREFERENCES, stream), 0):
                  OffsetAndMetadata(0, "", -1)})
    group.close()

    # The trainer records every finished round, also one its gate rejected.
    rejected = {"round": 3, "promoted": False,
                "reasons": ["probe/refusal_rate rose 0.000 -> 0.250 (> 0.1)"],
                "metrics": {"data/sft_helpful": 7.0}}
    StackPublisher(kafka_redis, stream).record_round(rejected)
    try:
        snap = monitor.snapshot(kafka_redis, stream)
        history = [json.loads(r) for r in store.lrange(REDIS_ROUNDS_KEY, 0, -1)]
    finally:  # the pointer is shared with the other tests on this stack
        store.delete(REDIS_LAST_ROUND_KEY, REDIS_ROUNDS_KEY)
        if previous is None:
            store.delete(REDIS_VERSION_KEY)
        else:
            store.set(REDIS_VERSION_KEY, previous)
    assert snap["trainer"]["last_round"] == rejected
    assert history[-1] == rejected  # the round history the dashboard's timeline reads
    console = Console(record=True, width=200)
    console.print(monitor.render(snap))
    shown = console.export_text()
    assert "last round: round 3 rejected: probe/refusal_rate rose 0.000 -> 0.250" in shown
    assert snap["topics"]["preferences"]["lag"] == {stream.app_id: 2}
    assert snap["topics"]["sft"]["total"] == 1 and snap["topics"]["sft"]["per_minute"] == 1
    assert snap["newest_example"]["steps"][0]["critique"] == "too harmful"
    assert snap["newest_example"]["judge"]["chosen_is_revision"] is True
    assert snap["judge"]["order_agreement"] == 0.0 and snap["judge"]["labels"] == 1
    assert snap["judge"]["mean_p_chosen"] == 0.8
    assert snap["judge"]["preferences_by_strategy"] == {"judge": 1, "contrastive": 1}
    assert snap["principles"]["p1"]["rounds"] == 1
    assert snap["principles"]["c3"]["judge_margin"] == pytest.approx(0.3)
    assert snap["trainer"]["rounds"][-1] == {"version": 2, "loss/sft": 1.5}
    assert snap["serving_policy_version"] == 2
    json.dumps(snap)  # --once --json must be serialisable
    monitor.render(snap)
