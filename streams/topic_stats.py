"""Read-only views of the live topics: end offsets, recent rates, consumer lag, newest records,
and a follower that receives new records as they arrive.

Used by ``cai monitor``, ``cai run``, ``cai bench`` and the dashboard. Everything here reads
through consumers with no group, so watching never moves anybody's offsets.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from core.settings import kafka_client_options

logger = logging.getLogger(__name__)


@dataclass
class TopicFlow:
    topic: str
    total: int           # messages ever written (sum of end offsets)
    last_minute: int     # messages written in the last 60 s
    lag: dict[str, int]  # consumer group -> messages not yet committed by it


class TopicReader:
    """One kafka-python consumer without a group, for offsets and tails of many topics."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaConsumer

        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
            consumer_timeout_ms=1000, request_timeout_ms=15000, client_id="cai-monitor",
            max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
            **kafka_client_options(),
        )
        from kafka.admin import KafkaAdminClient

        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="cai-monitor-admin",
                                        **kafka_client_options())

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()

    def partitions(self, topic: str):
        from kafka import TopicPartition

        parts = self._consumer.partitions_for_topic(topic) or set()
        return [TopicPartition(topic, p) for p in sorted(parts)]

    def flow(self, topic: str, groups: tuple[str, ...]) -> TopicFlow:
        parts = self.partitions(topic)
        if not parts:
            return TopicFlow(topic, 0, 0, {})
        ends = self._consumer.end_offsets(parts)
        minute_ago = int((time.time() - 60) * 1000)
        since = self._consumer.offsets_for_times({tp: minute_ago for tp in parts})
        recent = sum(ends[tp] - (since[tp].offset if since.get(tp) else ends[tp]) for tp in parts)
        lag = {}
        for group in groups:
            committed = self.committed(group)
            if not any(tp in committed for tp in parts):
                continue
            lag[group] = sum(max(0, ends[tp] - committed.get(tp, 0)) for tp in parts)
        return TopicFlow(topic, sum(ends.values()), recent, lag)

    def backlog(self, topic: str, group: str) -> int:
        """Messages of ``topic`` that ``group`` has not committed yet; a partition the group
        never committed counts from its beginning (a worker that has not started yet)."""
        parts = self.partitions(topic)
        if not parts:
            return 0
        ends = self._consumer.end_offsets(parts)
        begins = self._consumer.beginning_offsets(parts)
        committed = self.committed(group)
        return sum(max(0, ends[tp] - committed.get(tp, begins[tp])) for tp in parts)

    def committed(self, group: str) -> dict:
        """{TopicPartition: offset} the consumer ``group`` has committed ({} when unknown)."""
        try:
            # kafka-python 3 answers {group: {tp: meta}}; 2.x had list_consumer_group_offsets.
            if hasattr(self._admin, "list_group_offsets"):
                offsets = self._admin.list_group_offsets(group).get(group, {})
            else:
                offsets = self._admin.list_consumer_group_offsets(group)
        except Exception as exc:  # noqa: BLE001 - the group is not known yet
            logger.debug("no offsets for %s: %s", group, exc)
            return {}
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    def tail(self, topic: str, count: int, record_type=None) -> list[dict]:
        """The newest ``count`` JSON records of ``topic`` (across partitions), oldest first;
        with ``record_type`` only those that decode strictly as it (``message_record``)."""
        parts = self.partitions(topic)
        if not parts:
            return []
        self._consumer.assign(parts)
        ends = self._consumer.end_offsets(parts)
        begins = self._consumer.beginning_offsets(parts)
        want = 0
        for tp in parts:
            start = max(begins[tp], ends[tp] - count)
            want += ends[tp] - start
            self._consumer.seek(tp, start)
        records = []
        deadline = time.monotonic() + 10
        while len(records) < want and time.monotonic() < deadline:
            batch = self._consumer.poll(timeout_ms=500)
            for messages in batch.values():
                records += filter(None, (message_record(m, record_type) for m in messages))
        records.sort(key=lambda r: r.get("_timestamp", 0))
        return records[-count:]


def message_record(message, record_type=None) -> dict | None:
    """A consumed message as a JSON dict with its Kafka timestamp (seconds) in ``_timestamp``.

    With ``record_type`` (a ``streams.records`` class) the message is decoded strictly and None
    is returned for anything that does not decode: a hostile record never reaches a view (the
    stage that reads the topic dead-letters it). Without it, ``{"undecodable": True, ...}`` for
    bytes that are not JSON and None for a JSON non-object.
    """
    if record_type is not None:
        from streams.records import RecordError, decode, to_dict

        try:
            data = to_dict(decode(record_type, message.value))
        except RecordError:
            return None
    else:
        try:
            data = json.loads(message.value)
        except (ValueError, TypeError, RecursionError):
            data = {"undecodable": True}
    if not isinstance(data, dict):
        return None
    data.pop("__faust", None)
    data["_timestamp"] = message.timestamp / 1000
    return data


class TopicFollower:
    """Receives the records of some topics as they arrive, starting ``window`` records before
    the end of each partition; also reads their end offsets. Topics and partitions that appear
    later are picked up by ``refresh_assignment``."""

    def __init__(self, bootstrap: str, topics: dict[str, str], window: int,
                 record_types: dict | None = None) -> None:
        from kafka import KafkaConsumer

        self.topics = topics  # full name -> short name
        self.record_types = record_types or {}  # short name -> record class: decode strictly
        self.undecodable = 0  # messages dropped because they did not decode
        self.window = window
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
            request_timeout_ms=15000, client_id="cai-dashboard", fetch_max_wait_ms=100,
            max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
        self._assigned: list = []

    def refresh_assignment(self) -> bool:
        """Follow partitions that exist now and were not followed yet; True if any were new."""
        from kafka import TopicPartition

        self._consumer.topics()  # refresh the cluster metadata: topics created since the start
        found = [TopicPartition(topic, p) for topic in self.topics
                 for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
        new = [tp for tp in found if tp not in self._assigned]
        if not new:
            return False
        self._consumer.assign(found)
        ends = self._consumer.end_offsets(new)
        begins = self._consumer.beginning_offsets(new)
        for tp in new:
            self._consumer.seek(tp, max(begins[tp], ends[tp] - self.window))
        self._assigned = found
        return True

    def poll(self, timeout_s: float) -> list[tuple[str, dict]]:
        """(short topic name, record) of what arrived, in partition order."""
        if not self._assigned:
            time.sleep(timeout_s)
            return []
        out = []
        for messages in self._consumer.poll(timeout_ms=int(timeout_s * 1000)).values():
            for message in messages:
                short = self.topics[message.topic]
                record = message_record(message, self.record_types.get(short))
                if record is None:
                    self.undecodable += 1
                else:
                    record["_partition"], record["_offset"] = message.partition, message.offset
                    out.append((short, record))
        return out

    def end_offsets(self) -> dict:
        """{TopicPartition: end offset} of every followed partition."""
        return self._consumer.end_offsets(self._assigned) if self._assigned else {}

    def close(self) -> None:
        self._consumer.close()
