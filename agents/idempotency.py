"""Redis idempotency ledger: at-least-once delivery + dedup = each output effectively once.

Per input message a stage has a key ``cai:seen:<stage>:<key>`` (done) and a short-lived
``cai:claim:<stage>:<key>`` (in progress). The protocol, for each record of a batch:

1. done key exists            -> skip: the outputs were sent before (a replay or duplicate).
2. claim it (SET NX PX lease)  -> process, renewing the claim every third of the lease. If
   another worker holds the claim (a rebalance moved the partition while it was still
   working), wait until its done key appears or the lease runs out (a dead holder stops
   renewing). A claim held under our own ``worker_id`` is ours from before a restart, so a
   restarted worker with a stable ``--worker-id`` takes it back at once.
3. send every output and wait for the broker's ack, THEN set the done key, then drop the claim.

A crash before step 3's sends completes loses nothing: Kafka redelivers the input (offsets are
committed only after the batch is done) and the stage repeats the work. A crash in the
milliseconds between the broker's ack and the done key can repeat an output; repeated outputs
carry the same ``record_id`` (or stage key), the next stage skips them in step 1, and
``cai export`` / the trainer drop them. Redis holds nothing that cannot be rebuilt from topics:
losing it only means replays re-deliver records that consumers dedupe.
"""

from __future__ import annotations

import asyncio
import logging
import time

logger = logging.getLogger(__name__)

PREFIX = "cai:"
DEAD_MARK = "dead:"  # a done mark's value when the record went to dead-letter


def seen_key(stage: str, key: str) -> str:
    return f"{PREFIX}seen:{stage}:{key}"


def claim_key(stage: str, key: str) -> str:
    return f"{PREFIX}claim:{stage}:{key}"


def counter_key(stage: str, what: str) -> str:
    return f"{PREFIX}count:{stage}:{what}"


def namespace_for(topic_prefix: str) -> str:
    """Pipelines on other topic prefixes keep separate keys: ``cai:seen:exp1.policy:...``."""
    return "" if topic_prefix in ("", "cai.") else topic_prefix


class Ledger:
    """The protocol above on a ``redis.asyncio.Redis``-like client (decode_responses=True)."""

    def __init__(self, redis, worker_id: str, lease_s: float = 600.0, ttl_s: int = 14 * 24 * 3600,
                 poll_s: float = 0.5, namespace: str = "") -> None:
        self.redis = redis
        self.namespace = namespace
        self.worker_id = worker_id
        self.lease_ms = int(lease_s * 1000)
        self.ttl_s = ttl_s
        self.poll_s = poll_s

    async def is_done(self, stage: str, key: str) -> bool:
        return bool(await self.redis.exists(seen_key(self.namespace + stage, key)))

    async def claim(self, stage: str, key: str, wait_s: float | None = None,
                    take_over_s: float | None = None) -> bool:
        """True: the caller owns the work. False: it is already done (skip it).

        Another worker's live claim is waited for; after ``wait_s`` a ``TimeoutError`` is
        raised, after ``take_over_s`` the claim is taken over (its holder renews it but never
        finishes: it is stuck). Taking over can repeat an output; repeats share a record id.
        """
        deadline = None if wait_s is None else time.monotonic() + wait_s
        take_over = None if take_over_s is None else time.monotonic() + take_over_s
        ckey = claim_key(self.namespace + stage, key)
        while True:
            if await self.is_done(stage, key):
                return False
            if await self.redis.set(ckey, self.worker_id, nx=True, px=self.lease_ms):
                return True
            holder = await self.redis.get(ckey)
            if holder == self.worker_id:
                await self.redis.pexpire(ckey, self.lease_ms)
                return True
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{ckey} is held by {holder}")
            if take_over is not None and time.monotonic() > take_over:
                logger.warning("%s held by %s for more than %.0fs: taking it over", ckey, holder,
                               take_over_s)
                await self.redis.set(ckey, self.worker_id, px=self.lease_ms)
                return True
            logger.info("%s is being processed by %s; waiting", ckey, holder)
            await asyncio.sleep(self.poll_s)

    async def renew(self, stage: str, keys: list[str]) -> None:
        """Extend our claims while a long batch runs (a claim is only renewed by its holder)."""
        for key in list(keys):
            ckey = claim_key(self.namespace + stage, key)
            if await self.redis.get(ckey) == self.worker_id:
                await self.redis.pexpire(ckey, self.lease_ms)

    async def hold(self, stage: str, keys: list[str]) -> None:
        """Renew ``keys`` every third of the lease until cancelled."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.renew(stage, keys)
            except Exception as exc:  # noqa: BLE001 - a missed renewal only shortens the lease
                logger.warning("could not renew claims of %s: %s", stage, exc)

    async def done(self, stage: str, key: str, dead: bool = False) -> bool:
        """Mark done after the outputs were acknowledged. False if it was already marked.
        ``dead``: it went to dead-letter instead (the mark says ``dead:<worker>``, so ``cai
        dead-letter replay`` may clear it; a record done for real is never redriven)."""
        done_key = seen_key(self.namespace + stage, key)
        mark = f"{DEAD_MARK}{self.worker_id}" if dead else self.worker_id
        first = await self.redis.set(done_key, mark, nx=True, ex=self.ttl_s)
        await self.redis.delete(claim_key(self.namespace + stage, key))
        if not first:
            logger.warning("%s was already done: a duplicate output was emitted", done_key)
        return bool(first)

    async def count(self, stage: str, what: str, n: int = 1) -> None:
        if n:
            await self.redis.incrby(counter_key(self.namespace + stage, what), n)

    async def counters(self, stage: str) -> dict[str, int]:
        out = {}
        for what in ("in", "out", "skipped", "dead"):
            value = await self.redis.get(counter_key(self.namespace + stage, what))
            out[what] = int(value or 0)
        return out
