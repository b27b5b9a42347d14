"""Each class of fault against the real services (the harness, `cai chaos`, runs them all
under load; these are the focused checks of the default test run):

* outages park work: a hung Triton (SIGSTOP, past the client's deadline) and a hung Redis
  (past the socket timeout) delay a batch; nothing is dead-lettered and it resumes;
* crashes and stalls are supervised: a killed child is started again, a worker whose lag does
  not move with nothing in flight raises an alarm and is restarted;
* dead letters are redriven within the idempotency rules.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import uuid

import pytest

from agents import policy
from agents.delivery import run_batch
from agents.idempotency import Ledger, seen_key
from stack import children
from stack import services as stack_services
from stack.supervisor import ALARMS_KEY, Supervisor
from streams import topics
from streams.records import DeadLetterRecord, PromptRecord, encode
from streams.settings import StreamSettings
from tests.agents.conftest import make_services

pytestmark = pytest.mark.integration


def _pause(settings, service: str, seconds: float) -> threading.Thread:
    """SIGSTOP a service's process group now, SIGCONT it after ``seconds`` (in a thread)."""
    pid = stack_services._process(settings, service).read_pid()
    assert pid, f"{service} is not running"
    os.killpg(pid, signal.SIGSTOP)

    def resume():
        time.sleep(seconds)
        os.killpg(pid, signal.SIGCONT)

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    return thread


def _prompt(prompt_id: str) -> bytes:
    return encode(PromptRecord(prompt_id=prompt_id, prompt="How do I bake bread?",
                               kind="helpful"))


async def test_a_hung_triton_parks_the_batch_until_it_answers(live_stack):
    from serving.client import InferenceClient
    from serving.inference import TritonInference

    svc = make_services(backoff_s=0.5, park_backoff_s=1.0)
    client = InferenceClient(live_stack.triton_grpc, timeout_s=4.0)
    svc.inference = TritonInference(client)
    resumed = _pause(live_stack, "triton", 8.0)
    started = time.monotonic()
    try:
        sent = await asyncio.wait_for(
            run_batch(svc, policy.STAGE, [_prompt("hung-1"), _prompt("hung-2")]), 120)
    finally:
        resumed.join()
        await client.close()
    assert sent == 2 and time.monotonic() - started >= 7.0
    assert not svc.send.on(topics.DEAD_LETTER)


async def test_a_hung_redis_is_retried_not_waited_on_forever(kafka_redis):
    import redis.asyncio as aioredis

    svc = make_services()
    store = aioredis.Redis.from_url(kafka_redis.redis_address, decode_responses=True,
                                    socket_timeout=0.5, socket_connect_timeout=0.5)
    svc.ledger = Ledger(store, "w1", namespace=f"hang{uuid.uuid4().hex[:6]}.")
    resumed = _pause(kafka_redis, "redis", 3.0)
    try:
        sent = await asyncio.wait_for(run_batch(svc, policy.STAGE, [_prompt("r1")]), 60)
    finally:
        resumed.join()
    assert sent == 1 and len(svc.send.sent) == 1
    assert await svc.ledger.is_done("policy", "r1")
    await store.aclose()


def _stack(kafka_redis, tmp_path):
    return kafka_redis.model_copy(update={
        "state_dir": tmp_path, "kafka_bootstrap": kafka_redis.kafka_address,
        "redis_url": kafka_redis.redis_address})


def test_the_supervisor_restarts_a_crashed_child_and_a_stalled_worker(kafka_redis, tmp_path):
    import redis
    from kafka import KafkaProducer

    from streams.admin import ensure_topics

    settings = _stack(kafka_redis, tmp_path)
    run = uuid.uuid4().hex[:8]
    stream = StreamSettings(kafka_bootstrap=settings.kafka_address, topic_prefix=f"sv{run}.",
                            app_id=f"cai-sv-{run}", partitions=1)
    ensure_topics(stream)
    producer = KafkaProducer(bootstrap_servers=stream.kafka_address)
    for i in range(3):  # work nobody takes: the "worker" below only sleeps
        producer.send(topics.topic_name(topics.PROMPTS, stream), _prompt(f"s{i}")).get(30)
    producer.close()
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    supervisor = Supervisor(settings, stream, {"worker": sleeper}, dict(os.environ),
                            backoff_s=0.1, stall_s=5.0, watch_services=False)
    try:
        supervisor.check()
        first = children.child(settings, "worker").read_pid()
        assert first
        os.kill(first, signal.SIGKILL)
        time.sleep(0.5)
        supervisor.check()                          # crashed: started again
        second = children.child(settings, "worker").read_pid()
        assert second and second != first and supervisor.restarts()["worker"] == 2
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                e["kind"] == "stall" for e in supervisor.events):
            supervisor.check()
            time.sleep(0.5)
        assert any(e["kind"] == "stall" for e in supervisor.events)
        assert children.child(settings, "worker").read_pid() != second   # restarted
        alarms = redis.Redis.from_url(settings.redis_address).lrange(ALARMS_KEY, 0, -1)
        assert any(b"stall" in a for a in alarms)
    finally:
        supervisor.close()
        children.child(settings, "worker").stop(grace_s=2)


def test_dead_letters_are_listed_and_redriven_within_the_idempotency_rules(kafka_redis):
    import redis
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from agents import dead_letters
    from agents.idempotency import namespace_for
    from streams.admin import ensure_topics

    run = uuid.uuid4().hex[:8]
    stream = StreamSettings(kafka_bootstrap=kafka_redis.kafka_address, topic_prefix=f"dl{run}.",
                            app_id=f"cai-dl-{run}", partitions=1)
    ensure_topics(stream)
    store = redis.Redis.from_url(kafka_redis.redis_address, decode_responses=True)
    ns = namespace_for(stream.topic_prefix)
    store.set(seen_key(ns + "policy", "r1"), "dead:w9")     # dead-lettered (an old outage)
    store.set(seen_key(ns + "policy", "r2"), "w9")          # processed for real since

    def letter(prompt_id, payload, reason="InferenceError: policy UNAVAILABLE", **extra):
        return DeadLetterRecord(stage="policy", reason=reason, topic="prompts",
                                prompt_id=prompt_id, key=prompt_id, payload=payload, **extra)

    letters = [letter("r1", _prompt("r1").decode()), letter("r1", _prompt("r1").decode()),
               letter("r2", _prompt("r2").decode()),
               letter("r3", _prompt("r3").decode()[:10], truncated=True),
               letter("-", "{not json", reason="PromptRecord: payload is not JSON")]
    producer = KafkaProducer(bootstrap_servers=stream.kafka_address)
    for record in letters:
        producer.send(topics.topic_name(topics.DEAD_LETTER, stream), encode(record)).get(30)
    producer.close()

    found = dead_letters.read(stream, timeout_s=30)
    assert len(found) == 4                                      # the repeat of r1 is one row
    assert dead_letters.summary(found)["by_reason"] == {"InferenceError": 3, "PromptRecord": 1}
    chosen = dead_letters.select(found, reason="inferenceerror")
    plans = dead_letters.replay(chosen, stream, kafka_redis.redis_address)
    actions = {p.letter.prompt_id: p.action for p in plans}
    assert actions["r1"] == "replayed"
    assert actions["r2"].startswith("skipped: processed since")
    assert actions["r3"].startswith("not replayable")
    assert store.get(seen_key(ns + "policy", "r1")) is None     # the stage will process it again
    consumer = KafkaConsumer(bootstrap_servers=stream.kafka_address, group_id=None,
                             consumer_timeout_ms=3000)
    tp = TopicPartition(topics.topic_name(topics.PROMPTS, stream), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    replayed = [m.key for m in consumer]
    consumer.close()
    assert replayed == [b"r1"]
