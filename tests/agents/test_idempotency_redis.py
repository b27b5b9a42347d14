"""The batched ledger on a real Redis: one round trip per batch, still each record once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from agents.idempotency import Ledger, claim_key, counter_key, seen_key

pytestmark = pytest.mark.integration


@pytest.fixture
def client(kafka_redis):
    # A connection pool belongs to the loop that first used it: one client per test.
    return aioredis.Redis.from_url(kafka_redis.redis_address, decode_responses=True)


async def test_batched_claims_give_each_record_to_one_worker_once(client):
    ns = f"t{uuid.uuid4().hex[:8]}."
    first = Ledger(client, "w1", lease_s=30, poll_s=0.01, namespace=ns)
    second = Ledger(client, "w2", lease_s=30, poll_s=0.01, namespace=ns)
    keys = [f"k{i}" for i in range(20)]
    assert await first.claim_many("policy", keys[:15], counts={"in": 15}) == [True] * 15
    # The second worker's batch overlaps: it waits for the first worker's records ...
    waiting = asyncio.ensure_future(second.claim_many("policy", keys[5:], counts={"in": 15}))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert await first.done_many("policy", keys[:15], counts={"out": 15}) == 0
    # ... and gets only those the first did not do.
    assert await asyncio.wait_for(waiting, 5) == [False] * 10 + [True] * 5
    assert await second.done_many("policy", keys[15:], counts={"out": 5, "skipped": 10}) == 0
    for i, key in enumerate(keys):
        assert await client.get(seen_key(ns + "policy", key)) == ("w1" if i < 15 else "w2")
        assert await client.exists(claim_key(ns + "policy", key)) == 0
    assert {k: int(await client.get(counter_key(ns + "policy", k)) or 0)
            for k in ("in", "out", "skipped")} == {"in": 30, "out": 20, "skipped": 10}
    # A replay of the whole batch is skipped; marking again reports the duplicates.
    assert await first.claim_many("policy", keys) == [False] * 20
    assert await second.done_many("policy", keys[:2]) == 2


async def test_a_restarted_worker_takes_back_its_own_claims_in_one_batch(client):
    ns = f"t{uuid.uuid4().hex[:8]}."
    before = Ledger(client, "w1", lease_s=30, namespace=ns)
    assert await before.claim_many("critique", ["a", "b"]) == [True, True]
    after = Ledger(client, "w1", lease_s=30, namespace=ns)  # same --worker-id after a restart
    assert await after.claim_many("critique", ["a", "b", "c"]) == [True, True, True]
    other = Ledger(client, "w2", lease_s=30, namespace=ns, poll_s=0.01)
    with pytest.raises(TimeoutError):
        await other.claim("critique", "a", wait_s=0.05)
