"""Create the pipeline's topics explicitly, with the configured partition counts (idempotent).

Faust would otherwise auto-create source topics with whatever partition count the broker
defaults to, which can mismatch the app and its changelogs (DESIGN.md). Running this twice is
harmless; a topic that exists with FEWER partitions than configured is reported, never shrunk.
"""

from __future__ import annotations

import logging

from core.settings import kafka_client_options
from streams.settings import StreamSettings
from streams.topics import TopicSpec, all_topics

logger = logging.getLogger(__name__)


class TopicMismatch(RuntimeError):
    """An existing topic has a different partition count than the settings ask for."""


def ensure_topics(settings: StreamSettings, timeout_s: float = 30.0) -> dict[str, str]:
    """Create missing topics; return {topic: "created"|"exists"}. Raises TopicMismatch."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    specs = all_topics(settings)
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_address, client_id="cai-admin",
        request_timeout_ms=int(timeout_s * 1000), **kafka_client_options(),
    )
    try:
        existing = set(admin.list_topics())
        result: dict[str, str] = {}
        missing = [s for s in specs if s.name not in existing]
        for spec in missing:
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, spec.replication_factor)])
                result[spec.name] = "created"
                logger.info("created topic %s (%d partitions)", spec.name, spec.partitions)
            except TopicAlreadyExistsError:  # a concurrent creator won the race
                result[spec.name] = "exists"
        present = [s for s in specs if s.name in existing]
        if present:
            _check_partitions(admin, present)
            for spec in present:
                result[spec.name] = "exists"
        return result
    finally:
        admin.close()


def _check_partitions(admin, specs: list[TopicSpec]) -> None:
    # kafka-python 2.x names the topic "topic", 3.x "name"
    described = {d.get("name", d.get("topic")): len(d["partitions"])
                 for d in admin.describe_topics([s.name for s in specs])}
    for spec in specs:
        have = described.get(spec.name)
        if have is not None and have != spec.partitions:
            raise TopicMismatch(
                f"topic {spec.name} has {have} partitions but the settings ask for "
                f"{spec.partitions}. Fix: set CAI_PARTITIONS / CAI_TOPIC_PARTITIONS to {have}, or "
                "delete the topic.")
