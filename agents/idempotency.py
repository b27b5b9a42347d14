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

A stage runs the protocol for a whole batch at once: ``claim_many`` is one round trip (a Lua
script: skip the done, claim the free, take back our own; only records another worker holds fall
back to ``claim``'s wait), and ``done_many`` marks the whole batch done in one round trip after
every output of the batch was acknowledged, with the batch's counters in the same round trip.
A caller that retries on errors retries ``claim_many``'s halves apart (``claim_batch``, then
``wait_for_held``), so a failed wait does not add the round trip's counters again.

A crash before step 3's sends completes loses nothing: Kafka redelivers the input (offsets are
committed only after the batch is done) and the stage repeats the work. A crash in the
milliseconds between the broker's acks and the done keys can repeat an output; repeated outputs
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


# KEYS: seen key and claim key of each record, in pairs; ARGV: worker id, lease (ms).
# Per record: 0 = done before (skip), 1 = claimed (ours, or ours from before a restart),
# 2 = another worker holds it (wait for it: Ledger.claim).
CLAIM_MANY = """
local out = {}
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[#out + 1] = 0
  elseif redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[#out + 1] = 1
  elseif redis.call('GET', KEYS[i + 1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 2
  end
end
return out
"""


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
        self._claim_many = redis.register_script(CLAIM_MANY)

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

    async def claim_many(self, stage: str, keys: list[str],
                         counts: dict[str, int] | None = None,
                         take_over_s: float | None = None) -> list[bool]:
        """``claim`` for a batch, in one round trip with ``counts`` (counter increments) unless
        another worker holds some of the keys; True: the caller owns the record's work.
        ``take_over_s`` as in ``claim``, for each key another worker holds.

        A caller that retries on errors retries the two halves apart (``claim_batch`` once,
        then ``wait_for_held``): retrying the whole would add ``counts`` again."""
        states = await self.claim_batch(stage, keys, counts)
        return await self.wait_for_held(stage, keys, states, take_over_s)

    async def claim_batch(self, stage: str, keys: list[str],
                          counts: dict[str, int] | None = None) -> list[int]:
        """The round trip of ``claim_many``: ``counts`` added, each key skipped (0, done
        before), claimed (1) or found held by another worker (2)."""
        ns = self.namespace + stage
        pairs = [k for key in keys for k in (seen_key(ns, key), claim_key(ns, key))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for what, n in (counts or {}).items():
                if n:
                    pipe.incrby(counter_key(ns, what), n)
            if keys:
                await self._claim_many(keys=pairs, args=[self.worker_id, self.lease_ms],
                                       client=pipe)
            replies = await pipe.execute()
        return list(replies[-1]) if keys else []

    async def wait_for_held(self, stage: str, keys: list[str], states: list[int],
                            take_over_s: float | None = None) -> list[bool]:
        """From ``claim_batch``'s ``states``: which keys the caller owns, once the keys another
        worker held are done (False), free again or taken over (True). Safe to retry: a key
        claimed by an earlier try is ours (the same worker id) and is taken back."""
        owned = [state == 1 for state in states]
        waiting = [i for i, state in enumerate(states) if state == 2]
        if not waiting:
            return owned
        # Held by another worker: wait for its done mark, or for its lease to run out, or take
        # it over after ``take_over_s``; the claims we hold meanwhile are renewed.
        held = [key for key, mine in zip(keys, owned) if mine]
        holding = asyncio.ensure_future(self.hold(stage, held))
        try:
            for i in waiting:
                owned[i] = await self.claim(stage, keys[i], take_over_s=take_over_s)
                if owned[i]:
                    held.append(keys[i])
        finally:
            holding.cancel()
        return owned

    async def done_many(self, stage: str, keys: list[str],
                        counts: dict[str, int] | None = None) -> int:
        """``done`` for a batch whose outputs were all acknowledged, in one round trip with
        ``counts``; returns how many were already marked (each a duplicate output)."""
        ns = self.namespace + stage
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(seen_key(ns, key), self.worker_id, nx=True, ex=self.ttl_s)
                pipe.delete(claim_key(ns, key))
            for what, n in (counts or {}).items():
                if n:
                    pipe.incrby(counter_key(ns, what), n)
            replies = await pipe.execute()
        repeated = [key for key, first in zip(keys, replies[0:2 * len(keys):2]) if not first]
        for key in repeated:
            logger.warning("%s was already done: a duplicate output was emitted",
                           seen_key(ns, key))
        return len(repeated)

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
