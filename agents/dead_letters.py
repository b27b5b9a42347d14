"""``cai dead-letter list|replay``: show dead letters, and redrive them into their stage.

Every stage (and the trainer) sends what it cannot process to ``cai.dead-letter`` with the
reason, the source topic and the (truncated) raw payload. ``list`` reads that topic from the
beginning (one row per input: a crash can repeat a dead letter) and selects by ``--reason``
(a substring of the reason, case-insensitive), ``--stage`` and ``--id`` (prompt id or stage
key); it prints counts by stage and reason and a row per dead letter.

``replay`` sends the selected payloads back to their source topic, within the idempotency
rules (``agents/idempotency.py``):

* a record whose done mark says it went to dead-letter (``dead:<worker>``) gets that mark
  cleared first, so the stage processes it again; a record done for real is never redriven
  (replaying twice redrives once);
* a record that is claimed right now (in flight) is left alone;
* a payload that was truncated, or that does not decode as its stage's record, and the
  trainer's dead letters (records it could not use) are not replayable: they would only come
  back. ``--dry-run`` says what would happen.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass

from agents import compare, critique, policy, revise
from agents.export import read as read_topic
from agents.idempotency import DEAD_MARK, claim_key, namespace_for, seen_key
from core.settings import kafka_client_options
from streams import topics
from streams.records import RECORDS, DeadLetterRecord, RecordError, decode
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)

STAGES = {m.NAME: m.STAGE for m in (policy, critique, revise, compare)}


def reason_kind(reason: str) -> str:
    """The reason without its details: the text before the first colon or parenthesis."""
    return reason.split(":", 1)[0].split("(", 1)[0].strip()[:80] or "?"


def read(settings: StreamSettings, timeout_s: float = 60.0) -> list[DeadLetterRecord]:
    """Every distinct dead letter, oldest first."""
    return read_topic("dead-letter", settings, timeout_s=timeout_s).records


def select(letters: list[DeadLetterRecord], reason: str | None = None, stage: str | None = None,
           ids: tuple[str, ...] = ()) -> list[DeadLetterRecord]:
    out = []
    for letter in letters:
        if reason and reason.lower() not in letter.reason.lower():
            continue
        if stage and letter.stage != stage:
            continue
        if ids and letter.prompt_id not in ids and letter.key not in ids:
            continue
        out.append(letter)
    return out


def summary(letters: list[DeadLetterRecord]) -> dict:
    return {"total": len(letters),
            "by_stage": dict(Counter(d.stage for d in letters)),
            "by_reason": dict(Counter(reason_kind(d.reason) for d in letters).most_common())}


@dataclass
class Plan:
    letter: DeadLetterRecord
    action: str          # "replay", or why not
    key: str = ""        # the stage's idempotency key
    value: bytes = b""   # what goes back to the source topic


def plan(letter: DeadLetterRecord) -> Plan:
    """Whether a dead letter can be replayed, and what would be sent."""
    stage = STAGES.get(letter.stage)
    if stage is None:
        return Plan(letter, f"not replayable: stage {letter.stage!r} reads no stage topic")
    if letter.truncated:
        return Plan(letter, "not replayable: the payload was truncated")
    try:
        record = decode(RECORDS[stage.source], letter.payload.encode("utf-8"))
    except RecordError as exc:
        return Plan(letter, f"not replayable: the payload does not decode ({str(exc)[:100]})")
    return Plan(letter, "replay", stage.key(record), letter.payload.encode("utf-8"))


def replay(letters: list[DeadLetterRecord], settings: StreamSettings, redis_url: str,
           dry_run: bool = False) -> list[Plan]:
    """Redrive the replayable dead letters (once per stage key); returns every plan with what
    became of it."""
    import redis

    store = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=10)
    namespace = namespace_for(settings.topic_prefix)
    plans, chosen = [], set()
    for letter in letters:
        item = plan(letter)
        plans.append(item)
        if item.action != "replay":
            continue
        if (letter.stage, item.key) in chosen:
            item.action = "skipped: replayed once already in this run"
            continue
        done = store.get(seen_key(namespace + letter.stage, item.key))
        if done is not None and not done.startswith(DEAD_MARK):
            item.action = "skipped: processed since (done for real)"
            continue
        if store.exists(claim_key(namespace + letter.stage, item.key)):
            item.action = "skipped: in flight (claimed) right now"
            continue
        chosen.add((letter.stage, item.key))
    todo = [p for p in plans if p.action == "replay"]
    if dry_run or not todo:
        return plans
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_address, acks="all",
                             max_request_size=16 * 1024 * 1024, client_id="cai-dead-letter",
                             **kafka_client_options())
    try:
        for item in todo:
            # Clear a dead mark only if it is still one (a worker may have finished it since).
            done_key = seen_key(namespace + item.letter.stage, item.key)
            mark = store.get(done_key)
            if mark is not None and mark.startswith(DEAD_MARK):
                store.delete(done_key)
            future = producer.send(topics.topic_name(STAGES[item.letter.stage].source, settings),
                                   key=item.letter.prompt_id.encode("utf-8", "replace"),
                                   value=item.value)
            future.get(timeout=60)
            item.action = "replayed"
    finally:
        producer.close()
    return plans


def rows(letters: list[DeadLetterRecord], limit: int) -> list[dict]:
    return [{"stage": d.stage, "prompt_id": d.prompt_id, "key": d.key, "topic": d.topic,
             "reason": d.reason[:300], "payload_bytes": d.payload_bytes,
             "truncated": d.truncated, "created_at": d.created_at}
            for d in letters[-limit:]]


def dump(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
