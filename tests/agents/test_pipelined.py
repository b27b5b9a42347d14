"""Batches in flight at once (agents.delivery.run_pipelined): overlap, in-order acks, no ack for
a batch that was not processed, and a stop that lets the batches in flight finish."""

from __future__ import annotations

import asyncio

import pytest

from agents.batching import Batch
from agents.delivery import run_pipelined


class Stream:
    """Records the events acked, in order."""

    def __init__(self) -> None:
        self.acked: list[str] = []

    async def ack(self, event) -> None:
        self.acked.append(event)


def batches_of(stream: Stream, names: list[str], gap: asyncio.Event | None = None):
    async def gen():
        for name in names:
            if gap is not None and name == names[-1]:
                await gap.wait()
            yield Batch([name], [f"{name}-event"], stream)
    return gen()


async def test_the_next_batch_starts_while_the_previous_waits_and_acks_stay_in_order():
    stream, started, release = Stream(), [], {n: asyncio.Event() for n in "abc"}

    async def work(values):
        started.append(values[0])
        await release[values[0]].wait()

    task = asyncio.ensure_future(run_pipelined(batches_of(stream, list("abc")), work, 2, "s"))
    await asyncio.sleep(0.05)
    assert started == ["a", "b"]          # two in flight; "c" waits for a free slot
    release["b"].set()                    # the later batch finishes first ...
    await asyncio.sleep(0.05)
    assert stream.acked == []             # ... but is not acked before "a"
    release["a"].set()
    await asyncio.sleep(0.05)
    assert stream.acked == ["a-event", "b-event"] and started == ["a", "b", "c"]
    release["c"].set()
    await task
    assert stream.acked == ["a-event", "b-event", "c-event"]


async def test_one_in_flight_runs_batches_one_after_another():
    stream, log = Stream(), []

    async def work(values):
        log.append(("start", values[0]))
        await asyncio.sleep(0.01)
        log.append(("end", values[0]))

    await run_pipelined(batches_of(stream, list("ab")), work, 1, "s")
    assert log == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    assert stream.acked == ["a-event", "b-event"]


async def test_a_batch_that_failed_is_not_acked_nor_is_any_later_one():
    stream = Stream()

    async def work(values):
        if values[0] == "b":
            raise KeyError("bug")
        await asyncio.sleep(0.01)

    with pytest.raises(KeyError):
        await run_pipelined(batches_of(stream, list("abc")), work, 2, "s")
    assert stream.acked == ["a-event"]


async def test_a_stop_request_lets_the_batches_in_flight_finish_and_ack():
    stream, release, never = Stream(), asyncio.Event(), asyncio.Event()

    async def work(values):
        await release.wait()

    # the source blocks before its third batch, as a quiet topic does
    task = asyncio.ensure_future(run_pipelined(batches_of(stream, list("abc"), never), work, 3,
                                               "s"))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done() and stream.acked == []  # still finishing "a" and "b"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.acked == ["a-event", "b-event"]
