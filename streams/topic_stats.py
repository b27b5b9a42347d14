"""Read-only views of the live topics: end offsets, recent rates, consumer lag, newest records.

Used by ``cai monitor``, ``cai run`` and ``cai bench``. Everything here reads through a consumer
with no group, so watching never moves anybody's offsets.
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
            committed = self._committed(group)
            if not any(tp in committed for tp in parts):
                continue
            lag[group] = sum(max(0, ends[tp] - committed.get(tp, 0)) for tp in parts)
        return TopicFlow(topic, sum(ends.values()), recent, lag)

    def _committed(self, group: str) -> dict:
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

    def tail(self, topic: str, count: int) -> list[dict]:
        """The newest ``count`` JSON records of ``topic`` (across partitions), oldest first."""
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
                for message in messages:
                    try:
                        data = json.loads(message.value)
                    except (ValueError, TypeError):
                        data = {"undecodable": True}
                    if isinstance(data, dict):
                        data.pop("__faust", None)
                        data["_timestamp"] = message.timestamp / 1000
                        records.append(data)
        records.sort(key=lambda r: r.get("_timestamp", 0))
        return records[-count:]
