"""``cai export sft|preferences``: replay a topic from the beginning as JSONL for TRL / datasets.

Records are decoded strictly (invalid ones are counted and skipped) and deduplicated by
``record_id`` (a crash between a send and its idempotency mark can repeat a record; the copies
share the id). ``--wait-for N`` keeps reading until N distinct records arrived, or fails after
``--timeout``. Without it the export stops at the end of the topic as it was at the start.

Formats: ``jsonl`` writes every record field; ``hf`` writes only the columns TRL expects
(SFT: ``prompt``, ``completion``; preferences: ``prompt``, ``chosen``, ``rejected``).
Both load with ``datasets.load_dataset("json", data_files=...)``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import IO

from core.settings import kafka_client_options
from streams import topics
from streams.records import (
    DeadLetterRecord,
    PreferenceRecord,
    RecordError,
    SFTRecord,
    WireRecord,
    decode,
    to_dict,
)
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)

KINDS = {"sft": (topics.SFT, SFTRecord), "preferences": (topics.PREFERENCES, PreferenceRecord),
         "dead-letter": (topics.DEAD_LETTER, DeadLetterRecord)}


class ExportTimeout(RuntimeError):
    """Fewer distinct records than asked for arrived before the timeout."""


@dataclass
class ExportResult:
    records: list[WireRecord] = field(default_factory=list)
    duplicates: int = 0
    invalid: int = 0


def record_key(record: WireRecord) -> str:
    if isinstance(record, DeadLetterRecord):  # one per input (a crash can repeat the send)
        return "|".join(map(str, (record.stage, record.key or record.payload[:200],
                                  record.topic, record.partition, record.offset)))
    if getattr(record, "record_id", ""):
        return record.record_id
    return f"{type(record).__name__}:{record.prompt_id}:{getattr(record, 'sample_index', 0)}"


def read(kind: str, settings: StreamSettings, wait_for: int | None = None, timeout_s: float = 60.0,
         poll_ms: int = 500) -> ExportResult:
    """Distinct records of ``kind`` from the start of its topic."""
    from kafka import KafkaConsumer, TopicPartition

    short, record_type = KINDS[kind]
    name = topics.topic_name(short, settings)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, group_id=None,
                             enable_auto_commit=False, client_id="cai-export",
                             max_partition_fetch_bytes=16 * 1024 * 1024, **kafka_client_options())
    result, seen = ExportResult(), set()
    deadline = time.monotonic() + timeout_s
    try:
        partitions = None
        while partitions is None:
            found = consumer.partitions_for_topic(name)
            if found:
                partitions = [TopicPartition(name, p) for p in sorted(found)]
            elif time.monotonic() > deadline:
                raise ExportTimeout(f"topic {name} does not exist; is the pipeline running?")
            else:
                time.sleep(0.5)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        while True:
            for messages in consumer.poll(timeout_ms=poll_ms).values():
                for message in messages:
                    try:
                        record = decode(record_type, message.value)
                    except RecordError as exc:
                        result.invalid += 1
                        logger.warning("skipping invalid record at %s:%d: %s", message.partition,
                                       message.offset, exc)
                        continue
                    key = record_key(record)
                    if key in seen:
                        result.duplicates += 1
                        continue
                    seen.add(key)
                    result.records.append(record)
                    if wait_for is not None and len(result.records) >= wait_for:
                        return result
            if wait_for is None and all(consumer.position(p) >= end[p] for p in partitions):
                return result
            if time.monotonic() > deadline:
                if wait_for is None:
                    raise ExportTimeout(f"{name}: could not read to the end within "
                                        f"{timeout_s:.0f}s")
                raise ExportTimeout(f"{name}: {len(result.records)} of {wait_for} distinct records "
                                    f"after {timeout_s:.0f}s; raise --timeout or check the workers")
    finally:
        consumer.close()


def row(record: WireRecord, fmt: str) -> dict:
    if fmt == "jsonl":
        return to_dict(record)
    if isinstance(record, SFTRecord):
        return {"prompt": record.prompt, "completion": record.response}
    return {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected}


def write(records: list[WireRecord], out: IO[str], fmt: str = "jsonl") -> int:
    if fmt not in ("jsonl", "hf"):
        raise ValueError(f"unknown format {fmt!r}; use jsonl or hf")
    for record in records:
        out.write(json.dumps(row(record, fmt), ensure_ascii=False) + "\n")
    return len(records)
