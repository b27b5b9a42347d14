"""The pipeline on the real stack (Kafka, Redis, Triton with tiny models).

Two workers in one consumer group; 20 prompts (15 red-team, 5 benign) plus malformed messages.
One worker is SIGKILLed mid-run and restarted. The outputs must still be exactly one SFT record
per prompt and one preference per red-team prompt, and every malformed message must land in
dead-letter while the rest flows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agents import export
from agents.feed import publish
from scoring.prompt_sets import BENIGN, Prompt
from streams import topics
from streams.admin import ensure_topics
from streams.records import DeadLetterRecord, decode
from streams.settings import StreamSettings
from tests.conftest import poll_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
HARMFUL = [f"Integration question {i}: how would someone pick the lock of a neighbour's shed?"
           for i in range(15)]


def _worker(env: dict, worker_id: str, log: Path) -> subprocess.Popen:
    handle = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "cai", "worker", "--worker-id", worker_id],
                            cwd=ROOT,
                            env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _group_members(settings: StreamSettings) -> int:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_address)
    try:
        group = admin.describe_groups([settings.app_id])[settings.app_id]   # kafka-python 3.x shape
        return len(group["members"]) if group["group_state"] == "Stable" else 0
    except KafkaError:  # the group coordinator is not ready yet
        return 0
    finally:
        admin.close()


def _raw_send(settings: StreamSettings, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_address, acks="all",
                             max_request_size=16 * 1024 * 1024)
    for i, value in enumerate(values):
        producer.send(topics.topic_name(topics.PROMPTS, settings), key=f"bad{i}".encode(),
                      value=value)
    producer.flush()
    producer.close()


def test_two_workers_sigkill_restart_and_dead_letters(live_stack, tmp_path):
    run = uuid.uuid4().hex[:8]
    settings = StreamSettings(kafka_bootstrap=live_stack.kafka_address, topic_prefix=f"it{run}.",
                              app_id=f"cai-it-{run}", partitions=4)
    env = {**os.environ, "CAI_KAFKA_BOOTSTRAP": settings.kafka_address,
           "CAI_TOPIC_PREFIX": settings.topic_prefix,
           "CAI_APP_ID": settings.app_id, "CAI_PARTITIONS": "4",
           "CAI_PIPELINE_REDIS_URL": live_stack.redis_address,
           "CAI_PIPELINE_TRITON_GRPC": live_stack.triton_grpc,
           "CAI_PIPELINE_ROUNDS": "2", "CAI_PIPELINE_BATCH_SIZE": "4",
           "CAI_PIPELINE_BATCH_WITHIN_S": "0.2",
           "CAI_PIPELINE_POLICY_MAX_NEW_TOKENS": "12", "CAI_PIPELINE_CRITIQUE_MAX_NEW_TOKENS": "12",
           "CAI_PIPELINE_REVISION_MAX_NEW_TOKENS": "12",
           "CAI_PIPELINE_DATA_DIR": str(tmp_path / "faust"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    ensure_topics(settings)
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = {"w1": _worker(env, "w1", logs[0]), "w2": _worker(env, "w2", logs[1])}
    try:
        poll_until(lambda: _group_members(settings) == 2, 120, "two workers in the group",
                   logs)

        bad = [b"{this is not json", json.dumps({"prompt_id": 42, "prompt": "wrong type"}).encode(),
               b"\xff\xfe\xfd invalid utf-8",
               json.dumps({"prompt_id": "huge", "prompt": "x" * (10 * 1024 * 1024)}).encode()]
        _raw_send(settings, bad[:2])
        prompts = [Prompt(f"h{run}-{i}", text, "harmful", "it") for i, text in enumerate(HARMFUL)]
        prompts += [Prompt(f"b{run}-{i}", text, "helpful",
                           "benign") for i, text in enumerate(BENIGN[:5])]
        started = time.monotonic()
        publish(prompts[:10], settings, progress=False)
        _raw_send(settings, bad[2:])
        publish(prompts[10:], settings, progress=False)

        # kill one worker once work is flowing, then bring it back under the same id
        export.read("sft", settings, wait_for=4, timeout_s=300)
        workers["w1"].send_signal(signal.SIGKILL)
        workers["w1"].wait(10)
        workers["w1"] = _worker(env, "w1", logs[0])

        sft = export.read("sft", settings, wait_for=20, timeout_s=600).records
        elapsed = time.monotonic() - started
        prefs = export.read("preferences", settings, wait_for=15, timeout_s=300).records
        time.sleep(3)  # let any stray duplicate arrive before the full replay below
        all_sft = export.read("sft", settings)
        all_prefs = export.read("preferences", settings)

        assert sorted(r.prompt_id for r in all_sft.records) == sorted(p.prompt_id for p in prompts)
        assert (sorted(r.prompt_id for r in all_prefs.records)
                == sorted(p.prompt_id for p in prompts[:15]))
        for r in sft:
            steps = json.loads(r.steps_json)
            assert len(steps) == (2 if r.kind == "harmful" else 0)
            assert r.policy_version >= 1 and r.constitution_version
        for p in prefs:
            assert 0.5 <= p.p_chosen <= 1.0 and p.judge_version >= 1 and p.principle_ids
        print(f"\n20 prompts -> 20 SFT in {elapsed:.1f}s ({20 / elapsed * 60:.1f} prompts/min, "
              "tiny models, 2 rounds, 2 workers, one SIGKILL); raw duplicates: "
              f"sft={all_sft.duplicates} preferences={all_prefs.duplicates}")

        dead = _read_all(settings, topics.DEAD_LETTER)
        reasons = sorted(d.reason for d in dead)
        assert len(dead) == 4, reasons
        assert any("not JSON" in r for r in reasons)
        assert any("PromptRecord.prompt_id: expected a string" in r for r in reasons)
        assert any("not valid UTF-8" in r for r in reasons)
        huge = [d for d in dead if "characters" in d.reason]
        assert huge and huge[0].truncated and huge[0].payload_bytes > 10 * 1024 * 1024

        # both workers did work (partitions were split)
        import redis

        client = redis.Redis.from_url(live_stack.redis_address, decode_responses=True)
        pattern = f"cai:seen:{settings.topic_prefix}policy:*"
        owners = {client.get(k) for k in client.scan_iter(pattern)}
        assert {"w1", "w2"} <= owners
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in workers.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _read_all(settings: StreamSettings, short: str) -> list[DeadLetterRecord]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, group_id=None,
                             enable_auto_commit=False,
                             max_partition_fetch_bytes=16 * 1024 * 1024)
    name = topics.topic_name(short, settings)
    parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    out = []
    while any(consumer.position(p) < end[p] for p in parts):
        for messages in consumer.poll(timeout_ms=500).values():
            out += [decode(DeadLetterRecord, m.value) for m in messages]
    consumer.close()
    return out
