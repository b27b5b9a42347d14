"""``cai feed``: publish prompts to the ``prompts`` topic (ids are stable, so re-feeding a file
is harmless: the pipeline skips prompt ids it has already processed)."""

from __future__ import annotations

import logging
import random

from core.settings import kafka_client_options
from scoring.prompt_sets import Prompt
from streams import topics
from streams.records import PromptRecord, encode, now
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)


def records(items: list[Prompt]) -> list[PromptRecord]:
    return [PromptRecord(prompt_id=p.prompt_id, prompt=p.prompt, kind=p.kind, source=p.source,
                         created_at=now()) for p in items]


def publish(items: list[Prompt], settings: StreamSettings, progress: bool = True) -> int:
    """Send every prompt (key = prompt id) and wait for the broker's acks; returns the count."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=settings.kafka_address, acks="all", linger_ms=20,
                             max_request_size=16 * 1024 * 1024, client_id="cai-feed",
                             **kafka_client_options())
    name = topics.topic_name(topics.PROMPTS, settings)
    try:
        futures = []
        if progress:
            from rich.progress import Progress

            with Progress(transient=False) as bar:
                task = bar.add_task(f"feeding {name}", total=len(items))
                for record in records(items):
                    future = producer.send(name, key=record.prompt_id.encode(),
                                           value=encode(record))
                    future.add_callback(lambda _meta: bar.advance(task))
                    futures.append(future)
                producer.flush()
                for future in futures:
                    future.get(timeout=60)
                bar.update(task, completed=len(items))
        else:
            for record in records(items):
                futures.append(producer.send(name, key=record.prompt_id.encode(),
                                             value=encode(record)))
            producer.flush()
            for future in futures:
                future.get(timeout=60)
    finally:
        producer.close()
    return len(items)


def select(items: list[Prompt], limit: int | None, shuffle: bool, seed: int) -> list[Prompt]:
    if shuffle:
        items = list(items)
        random.Random(seed).shuffle(items)
    return items[:limit] if limit else items
