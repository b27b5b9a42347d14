"""What every stage does with a batch: decode, dedupe, process with retries, send, mark done.

A stage is described by a ``Stage``: its source topic, its record type, the idempotency key of
an input record, and ``process`` (records -> outputs per record, the only part that differs).

The Redis side of a batch costs two round trips: one claim for the whole batch
(``Ledger.claim_batch``, with the ``in`` counter; a wait for records other workers hold is
retried apart, so a batch is counted in once) and one done mark for every record whose outputs
were all acknowledged (``Ledger.done_many``, with the ``out``/``skipped`` counters). Records that
go to dead-letter are marked done one by one, as dead. ``phase`` times each step of a batch.

Failures never stop the stream:

* a message that does not decode or validate goes to dead-letter with the reason and the raw
  payload (truncated), and is marked so a replay does not dead-letter it twice;
* an outage **parks** the batch: a ``process`` that fails with a retryable error (Triton down,
  restarting, hung past its deadline, connection refused) is retried with capped exponential
  backoff for as long as it takes, the claims held and renewed; nothing is dead-lettered or
  marked done for it. While Triton does not answer its health check, the batch waits on that
  cheap check instead of re-sending (a hung server costs the outage plus one deadline);
* a ``process`` that fails otherwise (a bad request) is retried ``max_attempts`` times, then
  record by record once, and what still fails goes to dead-letter (``cai dead-letter replay``
  redrives it);
* Redis or Kafka errors (the ledger, sends) are retried until they succeed, because giving up
  there would lose data: a batch is acknowledged as soon as its handling returns. A
  *permanent* error there (a record too large for the broker, text no encoder accepts) is not
  retried: the input goes to dead-letter with that reason instead of blocking its partition.

``fault_point`` marks the steps of the delivery where the fault-injection harness
(``benchmarks/chaos.py``) kills a worker (env ``CAI_FAULT_POINT``); it is a no-op otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agents import metrics
from agents.batching import Batch, take_batches
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


class PermanentError(RuntimeError):
    """An infrastructure call that no retry can fix (e.g. a record larger than the broker takes)."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what} failed permanently: {type(cause).__name__}: {cause}")
        self.cause = cause


# Client errors that mean "this request can never succeed", by class name (aiokafka,
# kafka-python and redis-py spell them so; importing each client here is not needed).
PERMANENT_ERRORS = ("MessageSizeTooLargeError", "RecordTooLargeError", "RecordListTooLargeError",
                    "InvalidRecordError", "CorruptRecordException", "DataError",
                    "UnicodeEncodeError", "UnicodeDecodeError")


def is_permanent(exc: BaseException) -> bool:
    return isinstance(exc, PermanentError) or any(
        cls.__name__ in PERMANENT_ERRORS for cls in type(exc).__mro__)


def is_retryable(exc: BaseException) -> bool:
    """An outage rather than a bad request: the same call can succeed once the service is back
    (``InferenceError.retryable``, which includes deadlines; connection and timeout errors)."""
    if getattr(exc, "retryable", False):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError)) or (
        isinstance(exc, OSError) and not isinstance(exc, UnicodeError))


async def persist(factory: Callable[[], Awaitable[Any]], what: str, svc: Services) -> Any:
    """Retry an infrastructure call (Redis, Kafka) until it works; giving up would lose data.
    A permanent error raises ``PermanentError`` at once."""
    attempt = 0
    while True:
        try:
            return await factory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_permanent(exc):
                raise PermanentError(what, exc) from exc
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


def _delay(svc: Services, attempt: int, cap: float | None = None) -> float:
    s = svc.settings
    cap = s.max_backoff_s if cap is None else cap
    return min(cap, s.backoff_s * 2**min(attempt, 30)) * (0.5 + random.random() / 2)


_FAULT_POINT = os.environ.get("CAI_FAULT_POINT", "")


def fault_point(name: str) -> None:
    """Kill this process here, once, when the fault harness armed ``name`` (env
    ``CAI_FAULT_POINT``; ``CAI_FAULT_MARKER`` is a file that says it fired already)."""
    if _FAULT_POINT != name:
        return
    marker = os.environ.get("CAI_FAULT_MARKER", "")
    if marker:
        if os.path.exists(marker):
            return
        with open(marker, "w") as handle:
            handle.write(f"{os.getpid()} {time.time()}\n")
    logger.critical("fault point %s: killing this worker (fault injection)", name)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


# Batches of this process waiting out an outage; a stop request does not wait for them.
_parked: set[str] = set()


async def dead_letter(svc: Services, stage: str, reason: str, raw: Any, prompt_id: str = "-",
                      round_: int = 0, attempts: int = 0, source: str = "", key: str = "") -> None:
    payload, size, cut = truncate_payload(raw, svc.settings.dead_letter_payload_bytes)
    reason = reason[:4000].encode("utf-8", "replace").decode("utf-8")
    record = DeadLetterRecord(
        stage=stage, reason=reason, topic=source, prompt_id=prompt_id or "-", round=round_,
        key=key, attempts=attempts, payload=payload, payload_bytes=size, truncated=cut,
        created_at=now())
    logger.warning("dead-letter from %s (%s): %s", stage, prompt_id, reason[:200])
    try:
        await persist(lambda: svc.send(topics.DEAD_LETTER, prompt_id or "-", record),
                      "dead-letter send", svc)
    except PermanentError as exc:  # keep the reason at least; the payload is what was too big
        logger.error("dead letter of %s refused (%s); sending it without its payload",
                     prompt_id, exc)
        record.payload, record.truncated = "", True
        await persist(lambda: svc.send(topics.DEAD_LETTER, prompt_id or "-", record),
                      "dead-letter send", svc)
    await count(svc, stage, "dead")


async def count(svc: Services, stage: str, event: str, n: int = 1) -> None:
    """Count ``n`` records of ``stage`` as ``event`` (in, out, skipped, dead): in this process's
    metrics and in the shared Redis counters."""
    metrics.STAGE_RECORDS.labels(stage, event).inc(n)
    await persist(lambda: svc.ledger.count(stage, event, n), "counter", svc)


async def _process(svc: Services, stage: Stage, records: list) -> list[list[Output]]:
    if _FAULT_POINT == "in-triton-call":
        task = asyncio.ensure_future(stage.process(svc, records))
        await asyncio.sleep(0.2)  # the requests are on their way to Triton
        fault_point("in-triton-call")
        outputs = await task
    else:
        outputs = await stage.process(svc, records)
    if len(outputs) != len(records):
        raise RuntimeError(f"{stage.name}: process returned {len(outputs)} results for "
                           f"{len(records)} records")
    return outputs


async def _wait_until_healthy(svc: Services, stage: Stage) -> None:
    """While the inference server does not answer its (cheap) health check, wait on that."""
    healthy = getattr(svc.inference, "healthy", None)
    attempt = 0
    while healthy is not None and not await healthy():
        delay = _delay(svc, attempt, svc.settings.park_backoff_s)
        attempt += 1
        logger.warning("%s: inference server not healthy; parked, checking again in %.1fs",
                       stage.name, delay)
        await asyncio.sleep(delay)


async def _attempts(svc: Services, stage: Stage, records: list,
                    tries: int) -> list[list[Output]] | Exception:
    """Up to ``tries`` attempts for a bad request; as many as it takes for an outage."""
    last: Exception | None = None
    attempt = failures = 0
    parked = f"{stage.name}:{id(records)}"
    try:
        while failures < tries:
            try:
                return await _process(svc, stage, records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - outages park, bad requests dead-letter
                last = exc
                if is_retryable(exc):
                    if parked not in _parked:
                        metrics.PARKED.labels(stage.name).inc()
                    _parked.add(parked)
                    delay = _delay(svc, attempt, svc.settings.park_backoff_s)
                    attempt += 1
                    logger.warning("%s: batch of %d parked: %s; retry %d in %.1fs", stage.name,
                                   len(records), exc, attempt, delay)
                    await asyncio.sleep(delay)
                    await _wait_until_healthy(svc, stage)
                    continue
                failures += 1
                if failures < tries:
                    delay = _delay(svc, failures - 1)
                    logger.warning("%s: attempt %d/%d failed (%s); retrying in %.1fs", stage.name,
                                   failures, tries, exc, delay)
                    await asyncio.sleep(delay)
    finally:
        if parked in _parked:
            _parked.discard(parked)
            metrics.PARKED.labels(stage.name).dec()
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
            data = raw if isinstance(raw, bytes) else repr(raw).encode("utf-8", "replace")
            bad_key = "bad-" + hashlib.sha256(data).hexdigest()[:24]
            if await persist(lambda k=bad_key: svc.ledger.claim(stage.name, k), "claim", svc):
                await dead_letter(svc, stage.name, str(exc), raw, source=stage.source,
                                  key=bad_key)
                await persist(lambda k=bad_key: svc.ledger.done(stage.name, k, dead=True),
                              "mark done", svc)
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
    fault_point("before-claim")
    unique: dict[str, Any] = {}
    for record in records:  # a key twice in one batch: the second is a duplicate
        unique.setdefault(stage.key(record), record)
    wait = svc.settings.claim_wait_s
    with phase(stage.name, "claim"):
        batch_keys = list(unique)
        try:
            # The round trip that counts the batch in is retried alone; a failed wait for
            # other workers' claims is then retried without counting the batch again.
            states = await persist(lambda: svc.ledger.claim_batch(
                stage.name, batch_keys, counts={"in": len(values)}), "claim", svc)
        except PermanentError as exc:
            # A key the batched claim cannot send (text no encoder accepts) fails the whole
            # round trip, counters included: claim record by record, and dead-letter only
            # the records whose own claim fails.
            logger.warning("%s: batched claim failed (%s); claiming one by one", stage.name, exc)
            await persist(lambda: svc.ledger.count(stage.name, "in", len(values)), "counter",
                          svc)
            owned = await _claim_each(svc, stage, unique, wait)
        else:
            try:
                owned = await persist(lambda: svc.ledger.wait_for_held(
                    stage.name, batch_keys, states, take_over_s=wait), "claim wait", svc)
            except PermanentError as exc:  # counted in already
                logger.warning("%s: waiting for claims failed (%s); claiming one by one",
                               stage.name, exc)
                owned = await _claim_each(svc, stage, unique, wait)
    metrics.STAGE_RECORDS.labels(stage.name, "in").inc(len(values))
    keys = [key for key, mine in zip(unique, owned) if mine]  # renewed while we work
    skipped = len(records) - len(keys) - sum(mine is None for mine in owned)
    metrics.CLAIMS_IN_FLIGHT.labels(stage.name).inc(len(keys))
    holding = asyncio.ensure_future(svc.ledger.hold(stage.name, keys))
    try:
        return await _process_and_deliver(svc, stage, [unique[k] for k in keys], skipped)
    finally:
        holding.cancel()
        metrics.CLAIMS_IN_FLIGHT.labels(stage.name).dec(len(keys))


async def _claim_each(svc: Services, stage: Stage, unique: dict[str, Any],
                      wait: float) -> list[bool | None]:
    """``claim`` per record; None where the record's own claim failed permanently (it went to
    dead-letter)."""
    owned: list[bool | None] = []
    held: list[str] = []  # renewed while we wait for other workers' claims
    holding = asyncio.ensure_future(svc.ledger.hold(stage.name, held))
    try:
        for key, record in unique.items():
            try:
                mine = await persist(lambda k=key: svc.ledger.claim(stage.name, k,
                                                                    take_over_s=wait),
                                     "claim", svc)
            except PermanentError as exc:
                await _dead_end(svc, stage, record, exc)
                owned.append(None)
                continue
            owned.append(mine)
            if mine:
                held.append(key)
    finally:
        holding.cancel()
    return owned


async def _process_and_deliver(svc: Services, stage: Stage, mine: list, skipped: int) -> int:
    per_record: list[list[Output] | Exception] = []
    if mine:
        with phase(stage.name, "process"):
            per_record = await _outcomes(svc, stage, mine)
    delivered: list = []  # records whose outputs were all acknowledged
    with phase(stage.name, "send"):
        for record, outcome in zip(mine, per_record):
            if isinstance(outcome, Exception):
                await _dead_end(svc, stage, record, outcome, svc.settings.max_attempts)
        sending = [(r, o) for r, o in zip(mine, per_record) if not isinstance(o, Exception)]
        # Every output of the batch at once; each waits for the broker's ack.
        refused = await asyncio.gather(*(_send_outputs(svc, outcome) for _, outcome in sending))
        for (record, outcome), exc in zip(sending, refused):
            if exc is not None:  # an output the broker never takes: not retried forever
                await _dead_end(svc, stage, record, exc)
            else:
                delivered.append((record, outcome))
    sent = sum(len(outcome) for _, outcome in delivered)
    if delivered:
        fault_point("after-ack-before-done")
    # Only after every ack: the batch's delivered records are marked done, with its counters, in
    # one round trip. A crash between the acks and this mark repeats their outputs on replay
    # (same record ids; the next stage and the trainer drop them).
    with phase(stage.name, "done"):
        await persist(lambda: svc.ledger.done_many(
            stage.name, [stage.key(r) for r, _ in delivered],
            counts={"out": sent, "skipped": skipped}), "mark done", svc)
    metrics.STAGE_RECORDS.labels(stage.name, "out").inc(sent)
    metrics.STAGE_RECORDS.labels(stage.name, "skipped").inc(skipped)
    return sent


async def _send_outputs(svc: Services, outputs: list[Output]) -> PermanentError | None:
    """Send one record's outputs and wait for the broker's acks; the permanent error that
    refused one of them, if any."""
    try:
        await asyncio.gather(*(
            persist(lambda o=o: svc.send(o.topic, o.key, o.record), f"send to {o.topic}", svc)
            for o in outputs))
    except PermanentError as exc:
        return exc
    return None


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


async def _dead_end(svc: Services, stage: Stage, record, exc: BaseException,
                    attempts: int = 1) -> None:
    """Dead-letter one claimed record with the reason, and mark it done as dead (``cai
    dead-letter replay`` clears that mark to redrive it)."""
    key = stage.key(record)
    await dead_letter(svc, stage.name, f"{type(exc).__name__}: {exc}", record,
                      prompt_id=getattr(record, "prompt_id", "-"),
                      round_=getattr(record, "round", 0), attempts=attempts,
                      source=stage.source, key=key)
    try:
        await persist(lambda: svc.ledger.done(stage.name, key, dead=True), "mark done", svc)
    except PermanentError as again:  # the key itself is unusable: the dead letter says it all
        logger.error("%s: cannot mark %r done: %s", stage.name, key, again)


def _exit_process(stage: str, exc: BaseException) -> None:
    # Exiting at once keeps the batch's offsets (and those of every later batch in flight)
    # uncommitted, so a restarted worker replays them instead of losing them.
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
        sent = await asyncio.shield(task)
        fault_point("after-done-before-commit")
        return sent
    except asyncio.CancelledError:
        await _finish_in_flight(stage.name, [task])
        task.result()
        raise
    except Exception as exc:
        on_fatal(stage.name, exc)
        raise


async def run_pipelined(batches: AsyncIterator[Batch], work: Callable[[list], Awaitable[Any]],
                        in_flight: int, stage: str) -> None:
    """``work`` on each batch, up to ``in_flight`` batches at once, so that one batch's claim and
    model call overlap the previous one's wait for Kafka acks and its done mark.

    A batch is acknowledged (its offsets may be committed) only after its own work and after
    every earlier batch was acknowledged: offsets advance in order, and never past a batch that
    was not processed. A stop request lets the batches in flight finish and ack first."""
    running: deque[asyncio.Task] = deque()

    async def work_then_ack(batch: Batch, earlier: asyncio.Task | None) -> None:
        await work(batch.values)
        if earlier is not None:
            await earlier
        await batch.ack()

    try:
        async for batch in batches:
            running.append(asyncio.ensure_future(
                work_then_ack(batch, running[-1] if running else None)))
            while len(running) >= in_flight:
                await asyncio.shield(running.popleft())
    finally:
        await _finish_in_flight(stage, running)


async def _finish_in_flight(stage: str, running: Iterable[asyncio.Task]) -> None:
    """Wait for the batches in flight (on a stop request or an error); one parked by an outage
    could wait forever, so the process leaves without committing it (the next worker replays
    it and takes our claims back)."""
    pending = {task for task in running if not task.done()}
    if pending:
        logger.warning("%s: stopping; finishing the %d batch(es) in flight first", stage,
                       len(pending))
    while pending:
        if any(p.startswith(f"{stage}:") for p in _parked):
            on_fatal(stage, RuntimeError("stop requested while parked"))
        _, pending = await asyncio.wait(pending, timeout=0.5)


def register_agent(app, svc_ref: Callable[[], Services], source_topic, stage: Stage):
    """Add one Faust agent that feeds batches of ``source_topic`` to ``stage``.

    Batches (``agents.batching.take_batches``) let Triton's dynamic batching pay off, and
    ``PipelineSettings.batches_in_flight`` of them run at once (``run_pipelined``);
    ``svc_ref()`` returns the running Services, which exist only once the worker has started.
    """

    @app.agent(source_topic, name=f"cai-{stage.name}")
    async def stage_agent(stream):
        settings = svc_ref().settings
        await run_pipelined(
            take_batches(stream, settings.batch_size, settings.batch_within_s,
                         settings.batch_idle_s),
            lambda values: handle(svc_ref(), stage, values), settings.batches_in_flight,
            stage.name)

    return stage_agent
