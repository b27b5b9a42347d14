"""The trainer on the real stack: Kafka topics in, Triton + Redis + policy-versions out.

Phase 1: a few records, one round: the policy version goes up by one (v2 on a fresh stack),
Triton answers with that version, Redis ``cai:policy:version`` and the ``policy-versions``
topic agree. Phase 2: more records; the trainer is SIGKILLed mid-run and restarted. Every
produced record must end up trained in exactly one finished round (or held out in the probe)
and the committed Kafka offsets must equal the newest checkpoint's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from streams import topics
from streams.admin import ensure_topics
from streams.records import PolicyVersionRecord, PreferenceRecord, SFTRecord, decode, encode
from streams.settings import StreamSettings
from tests.conftest import poll_until, stack_env
from trainer import checkpoint as ckpt

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROOT = Path(__file__).parents[2]


def _produce(settings: StreamSettings, version: int, start: int, n: int) -> list[str]:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_address, acks="all")
    ids = []
    for i in range(start, start + n):
        sft = SFTRecord(prompt_id=f"s{i}", prompt=f"How do I get into my neighbour's shed {i}?",
                        response="I can't help with entering someone else's property; ask them.",
                        policy_version=version,
                        record_id=f"sft-{i}")
        pref = PreferenceRecord(prompt_id=f"p{i}", prompt=f"Write a threat to my coworker {i}",
                                chosen="I won't write threats. Want help talking to them calmly?",
                                rejected="Here is a scary message you could send:", p_chosen=0.85,
                                policy_version=version, record_id=f"pref-{i}")
        producer.send(topics.topic_name(topics.SFT, settings), key=sft.prompt_id.encode(),
                      value=encode(sft))
        producer.send(topics.topic_name(topics.PREFERENCES, settings), key=pref.prompt_id.encode(),
                      value=encode(pref))
        ids += [f"s{i}", f"p{i}"]
    producer.flush()
    producer.close()
    return ids


def _trainer(env: dict, trainer_dir: Path, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cai", "trainer", "--trainer-dir", str(trainer_dir), "--model",
           "tiny",
           "--round-every-examples", "4", "--round-every-seconds", "3600", "--probe-size", "1",
           "--max-length", "96", "--batch-size", "4", "--promotion-threshold", "10",
           # this test is about exactly-once delivery, not staleness (tested in test_loop.py)
           # nor the dev gate (test_gate.py), which the tiny random model never passes
           "--max-staleness", "1000", "--no-gate", *extra]
    handle = log.open("ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _accounted(trainer_dir: Path) -> tuple[Counter, list[str]]:
    trained: Counter = Counter()
    probe: list[str] = []
    base = ckpt.rounds_dir(trainer_dir)
    for folder in sorted(base.glob("round-*")) if base.exists() else []:
        if folder.name.endswith(".partial") or not (folder / ckpt.STATE).exists():
            continue
        examples = json.loads((folder / "examples.json").read_text())
        trained.update(e["prompt_id"] for e in examples["sft"] + examples["preferences"])
        probe += examples["probe_added"]
    return trained, probe


def _policy_versions(settings: StreamSettings) -> list[PolicyVersionRecord]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, enable_auto_commit=False)
    tp = TopicPartition(topics.topic_name(topics.POLICY_VERSIONS, settings), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    end = consumer.end_offsets([tp])[tp]
    out = []
    while consumer.position(tp) < end:
        for records in consumer.poll(timeout_ms=2000).values():
            out += [decode(PolicyVersionRecord, r.value) for r in records]
    consumer.close()
    return out


def _committed(settings: StreamSettings, keys: list[str]) -> dict[str, int | None]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, group_id="cai-trainer",
                             enable_auto_commit=False)
    out = {}
    for key in keys:
        topic, partition = key.rsplit("/", 1)
        out[key] = consumer.committed(TopicPartition(topic, int(partition)))
    consumer.close()
    return out


def _served_version(grpc_url: str) -> int:
    from serving.client import InferenceClient
    from serving.requests import GenerationParams

    async def ask() -> int:
        client = InferenceClient(grpc_url)
        try:
            [[answer]] = await client.generate("policy", ["Say hi."],
                                               GenerationParams(max_new_tokens=4, seed=0))
            return answer.model_version
        finally:
            await client.close()

    return asyncio.run(ask())


def _redis_version(stack) -> int:
    import redis

    value = redis.Redis.from_url(stack.redis_address).get("cai:policy:version")
    return int(value) if value else 1


def test_trainer_publishes_and_survives_sigkill(live_stack, tmp_path):
    run = uuid.uuid4().hex[:8]
    settings = StreamSettings(kafka_bootstrap=live_stack.kafka_address, topic_prefix=f"tr{run}.",
                              partitions=2)
    ensure_topics(settings)
    env = stack_env(live_stack, CAI_TOPIC_PREFIX=settings.topic_prefix)
    trainer_dir, log = tmp_path / "trainer", tmp_path / "trainer.log"
    start_version = _redis_version(live_stack)

    # Phase 1: one round -> one new policy version everywhere.
    produced = _produce(settings, start_version, 0, 3)  # 6 records: 2 probe + 4 trained
    proc = _trainer(env, trainer_dir, log, "--max-rounds", "1")
    assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    new_version = start_version + 1
    first = ckpt.latest_round(trainer_dir)
    assert ckpt.read_published(first) == {"version": new_version, "announced": True}
    assert _redis_version(live_stack) == new_version
    announced = _policy_versions(settings)
    assert [r.version for r in announced] == [new_version]
    assert "loss/sft" in json.loads(announced[0].metrics_json)
    assert _served_version(live_stack.triton_grpc) == new_version

    # Phase 2: 24 more records (6 rounds of 4); SIGKILL in the middle, then restart.
    produced += _produce(settings, new_version, 100, 12)
    proc = _trainer(env, trainer_dir, log)
    try:
        poll_until(lambda: ckpt.round_dir(trainer_dir, 3).exists(), 600, "round 3", [log], 0.5)
        time.sleep(0.5)  # round 3 is being published, or round 4 training
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = ckpt.latest_round(trainer_dir).name
        proc = _trainer(env, trainer_dir, log)

        def all_accounted() -> bool:
            trained, probe = _accounted(trainer_dir)
            return set(trained) | set(probe) == set(produced)

        poll_until(all_accounted, 600, "every record trained once", [log], 0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    trained, probe = _accounted(trainer_dir)
    assert max(trained.values()) == 1, [k for k, v in trained.items() if v > 1]
    assert sorted(set(trained) | set(probe)) == sorted(produced) and len(probe) == 2
    last = ckpt.latest_round(trainer_dir)
    state = ckpt.load_state(last)
    assert _committed(settings, list(state.offsets)) == state.offsets
    final_version = ckpt.read_published(last)["version"]
    assert _redis_version(live_stack) == final_version
    assert _policy_versions(settings)[-1].version == final_version
    assert _served_version(live_stack.triton_grpc) == final_version
    print(f"\ntrainer: killed after {killed_at}, resumed; {sum(trained.values())} records trained "
          f"once over {state.round} rounds; policy v{start_version} -> v{final_version}")


def test_the_trainer_sees_the_pipeline_drain_on_real_kafka(kafka_redis):
    """A stage topic with records the worker group has not committed is work waiting; once the
    group commits them, the pipeline has drained and a round may start."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from trainer.loop import KafkaPipeline

    run = uuid.uuid4().hex[:8]
    settings = StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix=f"dr{run}.",
                              partitions=2)
    ensure_topics(settings)
    stage_topics = [topics.topic_name(t, settings) for t in (topics.PROMPTS, topics.CRITIQUE)]
    group = f"workers-{run}"
    pipeline = KafkaPipeline(settings.kafka_address, stage_topics, group)
    assert pipeline.drained()  # nothing was ever fed
    producer = KafkaProducer(bootstrap_servers=settings.kafka_address)
    for i in range(3):
        producer.send(stage_topics[0], value=b"{}", partition=i % 2)
    producer.flush()
    producer.close()
    assert not pipeline.drained()  # the group never committed: all three are waiting
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, group_id=group,
                             enable_auto_commit=False)
    parts = [TopicPartition(stage_topics[0], p) for p in (0, 1)]
    ends = consumer.end_offsets(parts)
    consumer.commit({parts[0]: OffsetAndMetadata(ends[parts[0]], "", -1)})
    assert not pipeline.drained()  # one partition still has a record waiting
    consumer.commit({parts[1]: OffsetAndMetadata(ends[parts[1]], "", -1)})
    consumer.close()
    assert pipeline.drained()
