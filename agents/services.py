"""The outbound calls of every stage, behind small objects that tests replace.

* ``Inference`` (``serving/inference.py``): the model roles; the worker uses
  ``TritonInference``, the strategy grid ``LocalInference``.
* ``TopicSender``: send a record to a pipeline topic and wait for the broker's ack.
* ``Ledger`` (agents.idempotency): Redis idempotency keys and counters.

``Services`` bundles them with the settings and the constitution; agents only see ``Services``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from agents.constitution import Constitution
from agents.idempotency import Ledger
from agents.settings import PipelineSettings
from serving.inference import Inference, NullInference, TritonInference
from streams.records import WireRecord, encode

logger = logging.getLogger(__name__)


class Sender(Protocol):
    async def __call__(self, topic: str, key: str, record: WireRecord) -> None: ...


class TopicSender:
    """Send to faust topics (raw bytes) and wait until the broker acknowledged each message."""

    def __init__(self, topics: dict[str, Any]) -> None:
        self.topics = topics

    async def __call__(self, topic: str, key: str, record: WireRecord) -> None:
        future = await self.topics[topic].send(key=key.encode(), value=encode(record))
        await future


@dataclass
class Services:
    settings: PipelineSettings
    constitution: Constitution
    inference: Inference
    ledger: Ledger
    send: Sender


def connect(settings: PipelineSettings, constitution: Constitution, topics: dict[str, Any],
            namespace: str = "") -> Services:
    """Real services: Triton over gRPC (or no model: ``inference='null'``), Redis, the faust
    topics."""
    import redis.asyncio as redis

    from serving.client import InferenceClient

    inference = (NullInference() if settings.inference == "null" else TritonInference(
        InferenceClient(settings.triton_address, timeout_s=settings.triton_timeout_s)))
    # Socket timeouts: a hung Redis (SIGSTOP, a full network queue) raises and is retried by
    # ``delivery.persist`` instead of blocking the stage forever.
    store = redis.Redis.from_url(settings.redis_address, decode_responses=True,
                                 socket_timeout=settings.redis_timeout_s,
                                 socket_connect_timeout=settings.redis_timeout_s,
                                 health_check_interval=30)
    ledger = Ledger(store, settings.worker_id, settings.claim_lease_s, settings.seen_ttl_s,
                    namespace=namespace)
    return Services(settings, constitution, inference, ledger, TopicSender(topics))
