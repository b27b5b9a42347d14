"""The Faust application: one agent per stage, wired to the pipeline topics.

``create_app`` builds a fresh app (tests build one per test). Services (Triton client, Redis,
topic sender) are created on the worker's event loop on first use, unless the caller passes
its own (tests pass fakes). Delivery is at-least-once: Faust commits a batch's offsets only
after ``run_batch`` returned, and ``agents.idempotency`` turns redelivery into no-ops.
Faust's exactly-once mode has open upstream bugs, so it is not used.

Run a worker with ``cai worker``; two workers with the same ``CAI_APP_ID`` split the partitions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import faust

from agents import compare, critique, policy, revise
from agents import constitution as constitution_mod
from agents.delivery import register_agent
from agents.idempotency import namespace_for
from agents.services import Services, connect
from agents.settings import PipelineSettings
from core.settings import KafkaAuth
from streams import topics
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)

STAGES = (policy, critique, revise, compare)


@dataclass
class Pipeline:
    app: faust.App
    stream_settings: StreamSettings
    settings: PipelineSettings
    topics: dict[str, Any]
    agents: dict[str, Any] = field(default_factory=dict)
    services: Services | None = None

    def svc(self) -> Services:
        """The stage services; connected on first use, on the worker's event loop."""
        if self.services is None:
            constitution = constitution_mod.load(self.settings.constitution)
            self.services = connect(self.settings, constitution, self.topics,
                                    namespace_for(self.stream_settings.topic_prefix))
            logger.info("worker %s: constitution %s %s, %d rounds, compare=%s, strategy=%s, "
                        "preference=%s",
                        self.settings.worker_id, constitution.name, constitution.version,
                        self.settings.rounds,
                        self.settings.compare, self.settings.strategy, self.settings.preference)
        return self.services


def _broker(address: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in address.split(",") if host.strip()]


def _credentials() -> faust.SASLCredentials | None:
    """SASL credentials from env CAI_KAFKA_SASL_* (core.settings.KafkaAuth); None: plaintext."""
    auth = KafkaAuth()
    if not auth.enabled:
        return None
    return faust.SASLCredentials(username=auth.username,
                                 password=auth.password.get_secret_value(),
                                 mechanism=auth.mechanism)


def create_app(stream_settings: StreamSettings | None = None,
               settings: PipelineSettings | None = None,
               services: Services | None = None) -> Pipeline:
    stream_settings = stream_settings or StreamSettings()
    settings = settings or PipelineSettings()
    app = faust.App(
        stream_settings.app_id,
        broker=_broker(stream_settings.kafka_address),
        broker_credentials=_credentials(),
        value_serializer="raw",
        key_serializer="raw",
        processing_guarantee="at_least_once",
        store="memory://",
        web_enabled=False,
        topic_partitions=stream_settings.partitions,
        topic_replication_factor=stream_settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        datadir=str(settings.data_dir / settings.worker_id),
        broker_commit_every=100,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_max_request_size=16 * 1024 * 1024,
        consumer_max_fetch_size=16 * 1024 * 1024,
        broker_max_poll_interval=max(1000.0, settings.triton_timeout_s * 4),
        stream_processing_timeout=max(600.0, settings.triton_timeout_s * 4),
    )
    topic_objects = {
        short: app.topic(
            topics.topic_name(short, stream_settings),
            partitions=topics.partitions_for(short, stream_settings),
            replicas=stream_settings.replication_factor,
            value_serializer="raw", key_serializer="raw",
        )
        for short in topics.TOPICS
    }
    pipeline = Pipeline(app, stream_settings, settings, topic_objects, services=services)

    for stage in STAGES:
        source = topic_objects[stage.STAGE.source]
        pipeline.agents[stage.NAME] = register_agent(app, pipeline.svc, source, stage.STAGE)

    return pipeline
