"""Pipelined JetStream publishing for records produced on any thread.

The engine produces task-run records and log lines on the flow's thread and
on executor threads, many per millisecond. Waiting for a JetStream ack for
each would put a network round trip into every task run, so
:class:`Outbox` decouples the two: :meth:`Outbox.put` (any thread, never
blocks) appends the encoded record to a queue and wakes the event loop at
most once per batch; the pump on the loop publishes the batch with
``publish_async`` (many publishes in flight, acks collected as they come).

:meth:`Outbox.flush` is the durability point: it publishes whatever is
queued, waits for every outstanding ack, and publishes again (acked, one by
one, for up to a grace period) what was refused or not acknowledged in time.
Records are published in the order they were put; a re-published one lands
after later ones, which readers of these streams tolerate (see
:mod:`engine._core.resume`). Delivery is at least once: a record whose ack was
lost may be stored twice.

**Coalescing.** An item may carry a key (the task run id for task-run
records). When several items with one key wait in the queue together, only
the newest is published: a task run that goes Pending → Running → Completed
in microseconds costs one stored message, not three. With JetStream syncing
every message to disk (``sync_interval: always``), stored messages are what
bounds throughput. The pump publishes continuously, so any state that lasts
longer than a batch (milliseconds) is still published on its own, and the
newest state of every key always is. Log lines carry no key and are all
published.

Only one coroutine publishes at a time (``_drain`` holds a lock), because
two interleaved drains would reorder records of one subject.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import anyio
import nats.errors

__all__ = ["Outbox"]

log = logging.getLogger("sluice.engine")

#: Seconds to wait for outstanding acks at a flush before publishing again.
ACK_TIMEOUT = 10.0
#: Pauses between the acked publishes of a record that failed in the pipeline;
#: it is given up on after the outbox's ``grace`` (the settings' ``outage_grace``).
REPUBLISH_FIRST_PAUSE = 0.2
REPUBLISH_MOST_PAUSE = 2.0

_Item = tuple[str, bytes]
_Queued = tuple[str, bytes, str | None]


class Outbox:
    """Publishes ``(subject, payload)`` items to JetStream; create it on the event loop."""

    def __init__(self, js: Any, *, grace: float, ack_timeout: float = ACK_TIMEOUT) -> None:
        self._js = js
        self._ack_timeout = ack_timeout
        self._grace = grace
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wake = asyncio.Event()
        self._signalled = False
        self._lock = asyncio.Lock()
        self._in_flight: collections.deque[tuple[_Item, asyncio.Future[Any]]] = collections.deque()
        self._failed: list[_Item] = []
        #: Records put, records sent (after coalescing), records given up on.
        self.put_count = 0
        self.sent = 0
        self.lost = 0

    def put(self, subject: str, payload: bytes, key: str | None = None) -> None:
        """Queue one record; thread-safe and non-blocking. A newer record with the
        same ``key`` may replace it before it is sent (module docstring)."""
        self._queue.append((subject, payload, key))
        self.put_count += 1  # approximate under threads; statistics only
        # One wake-up per batch: the pump clears the flag before it drains,
        # so a record put after the clear sets it and wakes the pump again.
        if not self._signalled:
            self._signalled = True
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        """The pump: publish batches as they are put. Runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._signalled = False
            await self._drain()

    def _batch(self) -> list[_Item]:
        """Everything queued now, oldest first, keeping only the newest item per key."""
        queue = self._queue
        taken = [queue.popleft() for _ in range(len(queue))]
        newest = {key: i for i, (_, _, key) in enumerate(taken) if key is not None}
        return [
            (subject, payload)
            for i, (subject, payload, key) in enumerate(taken)
            if key is None or newest[key] == i
        ]

    async def _drain(self) -> None:
        async with self._lock:
            in_flight = self._in_flight
            while self._queue:
                for item in self._batch():
                    try:
                        future = await self._js.publish_async(item[0], item[1])
                    except (nats.errors.Error, OSError):
                        self._failed.append(item)
                        continue
                    in_flight.append((item, future))
                    self.sent += 1
            # Forget acked publishes, oldest first, so memory stays bounded.
            while in_flight and in_flight[0][1].done():
                item, future = in_flight.popleft()
                if future.cancelled() or future.exception() is not None:
                    self._failed.append(item)

    async def flush(self) -> None:
        """Return once everything put so far is stored (or given up on and logged)."""
        await self._drain()
        async with self._lock:
            waiting = list(self._in_flight)
            self._in_flight.clear()
            if waiting:
                futures = [future for _, future in waiting]
                await asyncio.wait(futures, timeout=self._ack_timeout)
            for item, future in waiting:
                if not future.done():
                    future.cancel()
                    self._failed.append(item)
                elif future.cancelled() or future.exception() is not None:
                    self._failed.append(item)
            failed, self._failed = self._failed, []
            for item in failed:
                await self._republish(item)

    async def _republish(self, item: _Item) -> None:
        # A stream electing a leader (a cluster node lost) has no responders
        # for seconds: tried a few times at once, its records would be lost.
        subject, payload = item
        deadline = anyio.current_time() + self._grace
        pause, tries = REPUBLISH_FIRST_PAUSE, 0
        while True:
            tries += 1
            try:
                await self._js.publish(subject, payload, timeout=self._ack_timeout)
                return
            except (nats.errors.Error, OSError) as exc:
                if anyio.current_time() + pause > deadline:
                    self.lost += 1
                    log.error("a record for %s was lost after %d tries: %r", subject, tries, exc)
                    return
            await anyio.sleep(pause)
            pause = min(pause * 2, REPUBLISH_MOST_PAUSE)
