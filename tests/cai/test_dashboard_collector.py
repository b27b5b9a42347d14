"""The dashboard's collector against real Kafka and Redis: one prompt's records on every topic,
a dead letter, a trainer round in Redis (with the gate's figures) and its round folder on disk
become the views, the lineage and the learning curve."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from cai.dashboard.collector import Collector
from streams import admin, records, topics
from streams.settings import StreamSettings
from tests.cai.test_dashboard import gate
from trainer import checkpoint
from trainer.config import TrainerConfig
from trainer.publisher import REDIS_LAST_ROUND_KEY, REDIS_ROUNDS_KEY, StackPublisher

pytestmark = pytest.mark.integration


def _wait(collector: Collector, predicate, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = collector.snapshot()
        if "topics" in snap and predicate(snap):
            return snap
        time.sleep(0.2)
    raise AssertionError(f"the snapshot never got there: {collector.snapshot()}")


def test_records_rounds_and_folders_become_the_views(kafka_redis, tmp_path):
    import redis
    from kafka import KafkaProducer

    run = uuid.uuid4().hex[:8]
    stream = StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix=f"col{run}.",
                            app_id=f"cai-col-{run}", partitions=1)
    admin.ensure_topics(stream)
    pid = f"p-{run}"
    step = {"round": 1, "principle_id": "harm", "critique": "It helps a burglar.",
            "revision": "I can't help with that.", "critic_version": 1, "reviser_version": 1}
    common = {"prompt_id": pid, "prompt": "How do I pick my neighbour's lock?"}
    sent = [
        (topics.PROMPTS, records.PromptRecord(**common, kind="harmful")),
        (topics.CRITIQUE, records.CritiqueRecord(**common, response="Use a pick.",
                                                 initial_response="Use a pick.", round=1)),
        (topics.REVISE, records.ReviseRecord(**common, response="Use a pick.", round=1,
                                             critique=step["critique"], principle_id="harm")),
        (topics.SFT, records.SFTRecord(**common, response=step["revision"],
                                       initial_response="Use a pick.",
                                       steps_json=json.dumps([step]), policy_version=1)),
        (topics.COMPARE, records.CompareRecord(**common, response_a="Use a pick.",
                                               response_b=step["revision"])),
        (topics.PREFERENCES, records.PreferenceRecord(**common, chosen=step["revision"],
                                                      rejected="Use a pick.", p_chosen=0.7,
                                                      probs_json="[[0.8, 0.4]]", strategy="judge")),
        (topics.DEAD_LETTER, records.DeadLetterRecord(stage="policy", prompt_id="-",
                                                      reason="PromptRecord: payload is not JSON",
                                                      payload="{oops")),
        (topics.RL_SAMPLES, records.RLSampleRecord(**common, answer="I can't help with that.",
                                                   reward=0.75, completion_tokens=6,
                                                   trainer_round=1)),
    ]
    trainer_dir = tmp_path / "trainer"
    state = checkpoint.RoundState(round=1, promoted=True, policy_weights="round-000001",
                                  reward_weights=None, policy_version=1, offsets={})
    folder = checkpoint.write_round(
        trainer_dir, state, {"loss/sft": 1.5},
        {"sft": [{"prompt_id": pid, "record_id": "r", "weight": 1.0, "policy_version": 1}],
         "preferences": [], "probe_added": []}, {}, TrainerConfig(), None)
    checkpoint.write_published(folder, 2, announced=True)
    summary = {**checkpoint.round_summary(folder),
               "gate": {"before": gate((2, 20), (0, 10)), "after": gate((8, 20), (1, 10))}}
    store = redis.Redis.from_url(kafka_redis.redis_address)
    collector = Collector(kafka_redis, stream, trainer_dir, interval_s=0.2).start()
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_redis.kafka_address)
        for short, record in sent:
            producer.send(topics.topic_name(short, stream), records.encode(record))
        producer.flush()
        producer.close()
        StackPublisher(kafka_redis, stream).record_round(summary)
        # The round history is shared by the stack's tests: wait for this round (it has a gate).
        snap = _wait(collector, lambda s: s["topics"]["preferences"]["total"] == 1
                     and s["topics"]["dead-letter"]["total"] == 1
                     # totals come from end offsets, rows from records polled: wait for both
                     and len(s["dead_letters"]["rows"]) == 1 and s["examples"]
                     and s["rl"]["total"] == 1
                     and any(r["gate"] and r["version"] == 2 for r in s["rounds"]))
        chain = collector.lineage(pid)
    finally:
        collector.stop()
        store.delete(REDIS_LAST_ROUND_KEY, REDIS_ROUNDS_KEY)

    assert snap["errors"] == []
    assert snap["latency"]["policy"]["n"] == 1 and snap["latency"]["end_to_end"]["n"] == 1
    assert snap["examples"][0]["prompt_id"] == pid and snap["examples"][0]["p_chosen"] == 0.7
    assert snap["judge"]["first_position_wins"] == pytest.approx(0.7)
    assert snap["dead_letters"]["rows"][0]["reason"].startswith("PromptRecord")
    assert snap["topics"]["rl-samples"]["total"] == 1
    assert snap["rl"]["rounds"][0]["mean_reward"] == 0.75 and snap["rl"]["rows"][0]["tokens"] == 6
    latest = snap["rounds"][0]
    assert latest["round"] == 1 and latest["version"] == 2
    assert latest["gate"]["harmless"]["after"]["value"] == 0.4
    harmless = snap["curve"]["series"]["harmless"]["dev"]
    assert [(p["version"], p["value"]) for p in harmless][-2:] == [(1, 0.1), (2, 0.4)]
    assert chain["samples"][0]["steps"] == [step] and chain["labels"][0]["p_chosen"] == 0.7
    assert chain["training"][0] == {"round": 1, "promoted": True, "reasons": [], "version": 2,
                                    "as": "sft", "weight": 1.0, "record_policy_version": 1}
