"""What every stage does with a batch: decode, dedupe, process with retries, send, mark done.

A stage is described by a ``Stage``: its source topic, its record type, the idempotency key of
an input record, and ``process`` (records -> outputs per record, the only part that differs).

Failures never stop the stream:

* a message that does not decode or validate goes to dead-letter with the reason and the raw
  payload (truncated), and is marked so a replay does not dead-letter it twice;
* a failing ``process`` (Triton down, a bad request) is retried with exponential backoff; after
  ``max_attempts`` the batch is retried record by record once, and what still fails goes to
  dead-letter;
* Redis or Kafka errors (the ledger, sends) are retried until they succeed, because giving up
  there would lose data: Faust acks a batch as soon as the agent asks for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agents import metrics
from agents.batching import take_batches
from agents.services import Services
from streams import topics
from streams.records import DeadLetterRecord, RecordError, WireRecord, decode, encode, now

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    topic: str          # short topic name, e.g. "critique"
    key: str            # Kafka message key (the prompt id keeps a prompt on one partition)
    record: WireRecord


@dataclass(frozen=True)
class Stage:
    name: str
    source: str
    record_type: type[WireRecord]
    key: Callable[[Any], str]
    process: Callable[[Services, list[Any]], Awaitable[list[list[Output]]]]
    check: Callable[[Services, Any], None] | None = None


def stable_seed(*parts: object) -> int:
    """A seed that depends only on ``parts`` (not on the process or the batch)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def truncate_payload(raw: Any, limit: int) -> tuple[str, int, bool]:
    if isinstance(raw, WireRecord):
        raw = encode(raw)
    elif isinstance(raw, (dict, list)):
        raw = json.dumps(raw)
    data = raw if isinstance(raw, (bytes, bytearray)) else str(raw).encode("utf-8", "replace")
    size = len(data)
    return bytes(data[:limit]).decode("utf-8", "replace"), size, size > limit


async def persist(factory: Callable[[], Awaitable[Any]], what: str, svc: Services) -> Any:
    """Retry an infrastructure call (Redis, Kafka) until it works; giving up would lose data."""
    attempt = 0
    while True:
        try:
            return await factory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any client error: wait and retry
            delay = _delay(svc, attempt)
            attempt += 1
            logger.error("%s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)
            await asyncio.sleep(delay)


@contextlib.contextmanager
def phase(stage: str, name: str):
    """Time a phase of a batch (``metrics.PHASES``) into ``cai_stage_phase_seconds``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.PHASE_SECONDS.labels(stage, name).observe(time.perf_counter() - started)


def _delay(svc: Services, attempt: int) -> float:
    s = svc.settings
    return min(s.max_backoff_s, s.backoff_s * 2**attempt) * (0.5 + random.random() / 2)


async def dead_letter(svc: Services, stage: str, reason: str, raw: Any, prompt_id: str = "-",
                      round_: int = 0, attempts: int = 0, source: str = "") -> None:
    payload, size, cut = truncate_payload(raw, svc.settings.dead_letter_payload_bytes)
    record = DeadLetterRecord(
        stage=stage, reason=reason[:4000], topic=source, prompt_id=prompt_id or "-", round=round_,
        attempts=attempts, payload=payload, payload_bytes=size, truncated=cut, created_at=now())
    logger.warning("dead-letter from %s (%s): %s", stage, prompt_id, reason[:200])
    await persist(lambda: svc.send(topics.DEAD_LETTER, prompt_id or "-", record),
                  "dead-letter send", svc)
    await count(svc, stage, "dead")


async def count(svc: Services, stage: str, event: str, n: int = 1) -> None:
    """Count ``n`` records of ``stage`` as ``event`` (in, out, skipped, dead): in this process's
    metrics and in the shared Redis counters."""
    metrics.STAGE_RECORDS.labels(stage, event).inc(n)
    await persist(lambda: svc.ledger.count(stage, event, n), "counter", svc)


async def _attempts(svc: Services, stage: Stage, records: list,
                    tries: int) -> list[list[Output]] | Exception:
    last: Exception | None = None
    for attempt in range(tries):
        try:
            outputs = await stage.process(svc, records)
            if len(outputs) != len(records):
                raise RuntimeError(f"{stage.name}: process returned {len(outputs)} results for "
                                   f"{len(records)} records")
            return outputs
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - model/server errors are retried, then dead-lettered
            last = exc
            if attempt + 1 < tries:
                delay = _delay(svc, attempt)
                logger.warning("%s: attempt %d/%d failed (%s); retrying in %.1fs", stage.name,
                               attempt + 1, tries, exc, delay)
                await asyncio.sleep(delay)
    assert last is not None
    return last


async def _decode_all(svc: Services, stage: Stage, values: list) -> list:
    records = []
    for raw in values:
        try:
            record = decode(stage.record_type, raw)
            if stage.check is not None:
                stage.check(svc, record)
            records.append(record)
        except RecordError as exc:
            data = raw if isinstance(raw, bytes) else repr(raw).encode()
            bad_key = "bad-" + hashlib.sha256(data).hexdigest()[:24]
            if await persist(lambda k=bad_key: svc.ledger.claim(stage.name, k), "claim", svc):
                await dead_letter(svc, stage.name, str(exc), raw, source=stage.source)
                await persist(lambda k=bad_key: svc.ledger.done(stage.name, k), "mark done", svc)
    return records


async def run_batch(svc: Services, stage: Stage, values: list) -> int:
    """Handle one batch from the stage's source topic; returns the number of outputs sent."""
    started = time.perf_counter()
    metrics.BATCH_RECORDS.labels(stage.name).observe(len(values))
    try:
        return await _claim_and_deliver(svc, stage, values)
    finally:
        metrics.BATCH_SECONDS.labels(stage.name).observe(time.perf_counter() - started)


async def _claim_and_deliver(svc: Services, stage: Stage, values: list) -> int:
    with phase(stage.name, "decode"):
        records = await _decode_all(svc, stage, values)
    unique: dict[str, Any] = {}
    for record in records:  # a key twice in one batch: the second is a duplicate
        unique.setdefault(stage.key(record), record)
    with phase(stage.name, "claim"):
        owned = await persist(lambda: svc.ledger.claim_many(
            stage.name, list(unique), counts={"in": len(values)}), "claim", svc)
    metrics.STAGE_RECORDS.labels(stage.name, "in").inc(len(values))
    keys = [key for key, mine in zip(unique, owned) if mine]  # renewed while we work
    skipped = len(records) - len(keys)
    metrics.CLAIMS_IN_FLIGHT.labels(stage.name).inc(len(keys))
    holding = asyncio.ensure_future(svc.ledger.hold(stage.name, keys))
    try:
        return await _process_and_deliver(svc, stage, [unique[k] for k in keys], skipped)
    finally:
        holding.cancel()
        metrics.CLAIMS_IN_FLIGHT.labels(stage.name).dec(len(keys))


async def _process_and_deliver(svc: Services, stage: Stage, mine: list, skipped: int) -> int:
    per_record: list[list[Output] | Exception] = []
    if mine:
        with phase(stage.name, "process"):
            per_record = await _outcomes(svc, stage, mine)
    with phase(stage.name, "send"):
        for record, outcome in zip(mine, per_record):
            if isinstance(outcome, Exception):
                await dead_letter(svc, stage.name, f"{type(outcome).__name__}: {outcome}",
                                  record, prompt_id=getattr(record, "prompt_id", "-"),
                                  round_=getattr(record, "round", 0),
                                  attempts=svc.settings.max_attempts, source=stage.source)
        outputs = [o for outcome in per_record if not isinstance(outcome, Exception)
                   for o in outcome]
        # Every output of the batch at once; each waits for the broker's ack.
        await asyncio.gather(*(
            persist(lambda o=o: svc.send(o.topic, o.key, o.record), f"send to {o.topic}", svc)
            for o in outputs))
    # Only after every ack: the whole batch is marked done, with its counters, in one round
    # trip. A crash between the acks and this mark repeats the batch's outputs on replay (same
    # record ids; the next stage and the trainer drop them).
    with phase(stage.name, "done"):
        await persist(lambda: svc.ledger.done_many(
            stage.name, [stage.key(r) for r in mine],
            counts={"out": len(outputs), "skipped": skipped}), "mark done", svc)
    metrics.STAGE_RECORDS.labels(stage.name, "out").inc(len(outputs))
    metrics.STAGE_RECORDS.labels(stage.name, "skipped").inc(skipped)
    return len(outputs)


async def _outcomes(svc: Services, stage: Stage, mine: list) -> list[list[Output] | Exception]:
    """Each record's outputs, or the exception that sends it to dead-letter."""
    result = await _attempts(svc, stage, mine, svc.settings.max_attempts)
    if not isinstance(result, Exception):
        return list(result)
    if len(mine) > 1 and not getattr(result, "retryable", False):
        # One bad record must not sink its batch: try each alone once more. (Not when the
        # server itself was unreachable: each record alone would only wait out the same outage.)
        logger.warning("%s: batch of %d failed (%s); retrying one by one", stage.name, len(mine),
                       result)
        per_record: list[list[Output] | Exception] = []
        for record in mine:
            single = await _attempts(svc, stage, [record], 1)
            per_record.append(single if isinstance(single, Exception) else single[0])
        return per_record
    return [result] * len(mine)


def _exit_process(stage: str, exc: BaseException) -> None:
    # Faust acks a batch when the agent leaves it, even on an exception; exiting at once keeps
    # those offsets uncommitted, so a restarted worker replays the batch instead of losing it.
    logger.critical("%s: unexpected error, exiting so the batch is replayed: %r", stage, exc,
                    exc_info=exc)
    logging.shutdown()
    os._exit(70)


on_fatal: Callable[[str, BaseException], None] = _exit_process


async def handle(svc: Services, stage: Stage, values: list) -> int:
    """``run_batch`` as agents call it: a stop request lets the batch in flight finish first
    (its offsets are committed on the way out), and an unexpected error stops the process
    before Faust can commit the batch's offsets."""
    task = asyncio.ensure_future(run_batch(svc, stage, values))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            logger.warning("%s: stopping; finishing the batch in flight first", stage.name)
            await task
        raise
    except Exception as exc:
        on_fatal(stage.name, exc)
        raise


def register_agent(app, svc_ref: Callable[[], Services], source_topic, stage: Stage):
    """Add one Faust agent that feeds batches of ``source_topic`` to ``stage``.

    Batches (``agents.batching.take_batches``) let Triton's dynamic batching pay off;
    ``svc_ref()`` returns the running Services, which exist only once the worker has started.
    """

    @app.agent(source_topic, name=f"cai-{stage.name}")
    async def stage_agent(stream):
        settings = svc_ref().settings
        async for batch in take_batches(stream, settings.batch_size, settings.batch_within_s,
                                        settings.batch_idle_s):
            await handle(svc_ref(), stage, batch)

    return stage_agent
