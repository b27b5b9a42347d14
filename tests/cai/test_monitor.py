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


def rl_sample(**fields) -> dict:
    """An rl-samples record as the monitor reads it (decoded, with its Kafka timestamp)."""
    record = records.RLSampleRecord(**{"prompt_id": "h1", "prompt": "How do I hotwire a car?",
                                       "answer": "I can't help with that.", "reward": 0.5,
                                       **fields})
    return {**records.to_dict(record), "_timestamp": 1.0}


def quiet_snapshot(**extra) -> dict:
    """A snapshot of a stack where nothing flows (what ``snapshot`` returns, without services)."""
    return {"time": 0.0, "topics": {"rl-samples": {"total": 0, "per_minute": 0, "lag": {}}},
            "in_flight": {}, "newest_example": None, "principles": {},
            "judge": monitor.judge_stats([]), "targets": {},
            "trainer": {"rounds": [], "published": 0, "last_round": None},
            "serving_policy_version": None, "alarms": [], "rl": None, "reward_model": None,
            **extra}


def rendered(snap: dict) -> str:
    console = Console(record=True, width=200)
    console.print(monitor.render(snap))
    return console.export_text()


def test_rl_stats_over_the_window_and_the_newest_round():
    samples = [rl_sample(trainer_round=1, sample=0, reward=0.0, completion_tokens=10),
               rl_sample(trainer_round=2, sample=0, reward=1.0, completion_tokens=20),
               rl_sample(trainer_round=2, sample=1, reward=0.5, completion_tokens=30,
                         advantage=-0.5, answer="Sure: first, open the steering column.")]
    stats = monitor.rl_stats(samples)
    assert stats["samples"] == 3 and stats["mean_reward"] == 0.5 and stats["mean_tokens"] == 20.0
    assert stats["round"] == 2 and stats["round_mean_reward"] == 0.75
    assert stats["newest"]["answer"].startswith("Sure: first") and stats["newest"]["sample"] == 1
    assert monitor.rl_stats([]) is None


def test_reward_model_stats_only_from_metrics_that_are_there():
    round_ = {"round": 4, "metrics": {"pm/heldout_accuracy": 0.7125, "pm/heldout_pairs": 80.0,
                                      "reward/version": 3.0, "loss/sft": 1.0}}
    assert monitor.reward_model_stats(round_) == {"round": 4, "heldout_accuracy": 0.7125,
                                                  "heldout_pairs": 80.0, "version": 3.0}
    only_version = {"round": 5, "metrics": {"reward/version": 3}}
    assert monitor.reward_model_stats(only_version) == {"round": 5, "version": 3}
    assert monitor.reward_model_stats({"round": 6, "metrics": {"loss/sft": 1.0}}) is None
    assert monitor.reward_model_stats(None) is None


def test_the_view_shows_rl_and_the_preference_model_when_present():
    samples = [rl_sample(trainer_round=3, sample=0, reward=0.25, completion_tokens=12,
                         policy_version=2, reward_version=3),
               rl_sample(trainer_round=3, sample=1, reward=0.75, advantage=0.5,
                         completion_tokens=8, policy_version=2, reward_version=3)]
    last_round = {"round": 3, "promoted": True, "version": 3, "reasons": [],
                  "metrics": {"pm/heldout_accuracy": 0.7125, "pm/heldout_pairs": 80.0,
                              "reward/version": 3.0}}
    text = rendered(quiet_snapshot(
        rl=monitor.rl_stats(samples), reward_model=monitor.reward_model_stats(last_round),
        trainer={"rounds": [], "published": 1, "last_round": last_round}))
    assert ("RL samples (recent window): 2   mean reward: 0.500   mean answer tokens: 10.0   "
            "round 3: mean reward 0.500") in text
    assert "preference model (round 3): held-out accuracy 71% (n=80)   reward model v3" in text
    assert "newest RL sample h1 (round 3)" in text
    assert "I can't help with that." in text
    assert "reward 0.750   advantage +0.500   sample 1   policy v2   reward v3" in text
    assert "rl-samples" in text  # in the topics table, with the others


def test_the_view_leaves_rl_out_when_nothing_is_there():
    text = rendered(quiet_snapshot(trainer={"rounds": [], "published": 0, "last_round": {
        "round": 1, "promoted": False, "reasons": ["no data"], "metrics": {"loss/sft": 1.0}}}))
    assert "RL samples" not in text and "preference model" not in text
    assert "newest RL sample" not in text
    # The preference model's figures alone (a round that trained it, no samples yet).
    only_pm = rendered(quiet_snapshot(reward_model={"round": 2, "heldout_accuracy": 0.5}))
    assert "preference model (round 2): held-out accuracy 50%" in only_pm
    assert "reward model v" not in only_pm and "RL samples" not in only_pm
    no_pairs = rendered(quiet_snapshot(reward_model={"round": 2, "heldout_pairs": 0.0}))
    assert "preference model (round 2): held-out accuracy - (n=0)" in no_pairs


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
    sample = records.RLSampleRecord(prompt_id="x3", prompt="q", answer="an answer", reward=0.25,
                                    completion_tokens=4, trainer_round=3)
    for short, record in ((topics.SFT, sft), (topics.PREFERENCES, contrastive),
                          (topics.PREFERENCES, pref),
                          (topics.POLICY_VERSIONS, version), (topics.RL_SAMPLES, sample)):
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
                "metrics": {"data/sft_helpful": 7.0, "pm/heldout_accuracy": 0.65,
                            "pm/heldout_pairs": 40.0}}
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
    assert snap["topics"]["rl-samples"]["total"] == 1
    assert snap["rl"]["samples"] == 1 and snap["rl"]["mean_reward"] == 0.25
    assert snap["reward_model"] == {"round": 3, "heldout_accuracy": 0.65, "heldout_pairs": 40.0}
    assert "preference model (round 3): held-out accuracy 65% (n=40)" in shown
    json.dumps(snap)  # --once --json must be serialisable
    monitor.render(snap)
