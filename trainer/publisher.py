"""The trainer's outbound calls: publish a checkpoint, announce it, read the serving version.

Kept apart from the loop so tests can pass a fake with the same methods.
Publishing goes through ``serving.publish.publish_policy`` (Triton load, ready check, Redis
pointer ``cai:policy:version``); the announcement is a ``PolicyVersionRecord`` carrying the
round's metrics on the ``policy-versions`` topic. The loop calls ``announce`` itself, after
it has recorded the new version on disk, so a crash in between is repaired on restart.
In online RL rounds ``send_samples`` puts each sampled answer and its reward on ``rl-samples``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.settings import StackSettings, kafka_client_options
from streams.settings import StreamSettings

logger = logging.getLogger(__name__)


# The trainer's newest finished round (promoted or rejected, and why), as JSON: live state for
# `cai monitor`; rebuildable from the round folders.
REDIS_LAST_ROUND_KEY = "cai:trainer:last_round"
# Every finished round's summary, oldest first, capped: the dashboard's policy-version timeline
# and learning curve.
REDIS_ROUNDS_KEY = "cai:trainer:rounds"
ROUNDS_KEPT = 500


class StackPublisher:
    """Publishes to the running stack (Triton + Redis + Kafka)."""

    def __init__(self, stack: StackSettings, streams: StreamSettings, keep_last: int = 3):
        self.stack = stack
        self.streams = streams
        self.keep_last = keep_last

    def publish(self, checkpoint_dir: Path) -> int:
        from serving.publish import publish_policy

        return publish_policy(checkpoint_dir, self.stack, keep_last=self.keep_last)

    def publish_reward(self, folder: Path) -> int:
        """Serve a preference model as the next version of the ``reward`` role (mode 'rloo')."""
        from serving.publish import publish_role

        return publish_role("reward", folder, self.stack, keep_last=self.keep_last)

    def announce(self, version: int, checkpoint_dir: Path, metrics: dict) -> None:
        from streams.records import PolicyVersionRecord, stamp
        from streams.topics import POLICY_VERSIONS, topic_name

        record = stamp(PolicyVersionRecord(version=version, checkpoint=str(checkpoint_dir),
                                           metrics_json=json.dumps(metrics, sort_keys=True)))
        self._send(POLICY_VERSIONS, [(str(version), record)], timeout_s=30)
        logger.info("announced policy v%d on %s", version,
                    topic_name(POLICY_VERSIONS, self.streams))

    def dead_letter(self, records: list) -> None:
        """Send the dead letters of records the trainer could not use (``DeadLetterRecord``s,
        keyed by their source position) and wait for the acks."""
        from streams.topics import DEAD_LETTER

        self._send(DEAD_LETTER, [(f"trainer:{r.key}/{r.offset}", r) for r in records])
        logger.info("sent %d dead letters of undecodable records", len(records))

    def send_samples(self, records: list) -> None:
        """Send an RL round's sampled answers with their rewards (``RLSampleRecord``s) to
        ``rl-samples`` for the monitor and the dashboard, and wait for the acks."""
        from streams.topics import RL_SAMPLES

        self._send(RL_SAMPLES, [(f"{r.prompt_id}/{r.sample}/{r.trainer_round}", r)
                                for r in records])
        logger.info("sent %d RL samples", len(records))

    def _send(self, short: str, keyed: list[tuple[str, object]], timeout_s: float = 60) -> None:
        """Send (key, record) pairs to one topic, acknowledged by every replica; wait for each
        ack, so a send that fails raises here instead of losing records."""
        from kafka import KafkaProducer

        from streams.records import encode
        from streams.topics import topic_name

        if not keyed:
            return
        producer = KafkaProducer(bootstrap_servers=self.streams.kafka_address, acks="all",
                                 client_id="cai-trainer", max_request_size=16 * 1024 * 1024,
                                 **kafka_client_options())
        try:
            topic = topic_name(short, self.streams)
            futures = [producer.send(topic, key=key.encode(), value=encode(record))
                       for key, record in keyed]
            for future in futures:
                future.get(timeout=timeout_s)
        finally:
            producer.close()

    def record_round(self, summary: dict) -> None:
        """Store the round's outcome for the monitor and append it to the round history (the
        newest ``ROUNDS_KEPT``); a Redis failure only costs the live view."""
        import redis

        text = json.dumps(summary, sort_keys=True)
        try:
            store = redis.Redis.from_url(self.stack.redis_address, socket_timeout=5)
            with store.pipeline(transaction=True) as pipe:
                pipe.set(REDIS_LAST_ROUND_KEY, text)
                pipe.rpush(REDIS_ROUNDS_KEY, text)
                pipe.ltrim(REDIS_ROUNDS_KEY, -ROUNDS_KEPT, -1)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not record round %s in Redis: %s", summary.get("round"), exc)

    def find_published(self, checkpoint_dir: Path) -> int | None:
        """The version serving already has for this checkpoint, if any: recorded in Redis, or
        installed in the repository by a publish that was killed before it reached Redis."""
        import redis

        from serving.publish import REDIS_CHECKPOINTS_KEY, adopt_published

        wanted = str(Path(checkpoint_dir).resolve())
        try:
            entries = redis.Redis.from_url(self.stack.redis_address, socket_timeout=5,
                                           decode_responses=True).hgetall(REDIS_CHECKPOINTS_KEY)
        except redis.RedisError as exc:
            # The repository's version folders say it too: never publish the same weights
            # again under a new number because Redis is down.
            logger.warning("cannot read %s from Redis (%s); looking in the model repository",
                           REDIS_CHECKPOINTS_KEY, exc)
            entries = {}
        matches = [int(v) for v, path in entries.items() if path == wanted]
        if matches:
            return max(matches)
        return adopt_published(checkpoint_dir, self.stack)

    def current_version(self) -> int:
        """The serving policy version from Redis; 1 (the base model) when unset or unreachable."""
        import redis

        from serving.publish import REDIS_VERSION_KEY, serving_version

        try:
            value = redis.Redis.from_url(self.stack.redis_address, socket_timeout=5).get(
                REDIS_VERSION_KEY)
        except redis.RedisError as exc:
            logger.warning("cannot read %s from Redis (%s); assuming policy v1", REDIS_VERSION_KEY,
                           exc)
            return 1
        return serving_version(value)
