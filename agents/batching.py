"""Batches from a Faust stream that leave as soon as the stage has nothing more to wait for.

Faust's ``stream.take(max, within)`` wakes every ``within`` seconds and hands over what arrived
meanwhile, so a record that reaches an idle stage waits for the rest of that period (up to 0.5 s
per hop with the default window). ``take_batches`` hands a batch over once ``max_`` records are
in, or once no further record arrived for ``idle_s`` after the last one (a burst from the
previous stage is a few milliseconds long), or ``within`` after the first; while a batch is
being processed, the next one fills up as before. The same mechanism as ``take`` (a stream
processor that fills a buffer, manual acks), with a different flush rule, and the acks left to
the caller: each ``Batch`` is acknowledged with ``Batch.ack`` once it was processed, so a caller
may hand the next batch over while the previous one still waits for its sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Batch:
    """Values taken from a stream, and the events whose offsets ``ack`` commits."""

    values: list[Any]
    events: list[Any]
    stream: Any

    async def ack(self) -> None:
        """Acknowledge the batch: Faust may commit its offsets (call it after processing)."""
        for event in self.events:
            await self.stream.ack(event)


async def take_batches(stream, max_: int, within: float, idle_s: float) -> AsyncIterator[Batch]:
    """Yield batches of at most ``max_`` values from ``stream`` (see the module docstring); none
    is acknowledged here."""
    buffer: list[Any] = []
    events: list[Any] = []
    arrived = asyncio.Event()    # a record was added
    room = asyncio.Event()       # the buffer has room again
    room.set()

    async def add_to_buffer(value):
        while len(buffer) >= max_:  # full: wait until the batch was taken
            room.clear()
            await stream.wait(room)
        buffer.append(value)
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches found no current event")
        events.append(event)
        arrived.set()
        return value

    stream.enable_acks = False  # the caller acks each batch after processing it
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))  # Faust's take does the same
    loop = asyncio.get_running_loop()
    while not stream.should_stop:
        if not buffer:
            arrived.clear()
            await stream.wait_for_stopped(arrived, timeout=max(within, 1.0))
            if not buffer:
                continue
        first = loop.time()
        while len(buffer) < max_:
            count = len(buffer)
            arrived.clear()
            left = within - (loop.time() - first)
            if left <= 0:
                break
            await stream.wait_for_stopped(arrived, timeout=min(idle_s, left))
            if len(buffer) == count:  # nothing new for idle_s: the burst is over
                break
        batch = Batch(list(buffer), list(events), stream)
        buffer.clear()
        events.clear()
        room.set()
        yield batch
