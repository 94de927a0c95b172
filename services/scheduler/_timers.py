"""One heap of timers and one task that sleeps until the earliest.

Owns waiting, not acting: :meth:`Timers.run` hands each key whose time came
to a callback, in time order. Setting a key again moves it; cancelling it
forgets it (stale heap entries are skipped when they surface, and the heap
is rebuilt when they pile up). A timer earlier than the one being waited
for wakes the sleeper at once. The cost of a pass is the number of keys
that are due, not the number of keys held.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime

import anyio

from shared.clock import Clock

__all__ = ["Timers"]


class Timers:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._heap: list[tuple[datetime, int, Hashable]] = []
        self._live: dict[Hashable, tuple[datetime, int]] = {}
        self._seq = itertools.count()
        self._changed = anyio.Event()
        self.waiting_for: datetime | None = None
        """The time the sleeper waits for (None: nothing, or not sleeping)."""
        self.firing = False
        """Handing due keys to the callback (some are out of the heap, not yet handed)."""

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._live

    def when(self, key: Hashable) -> datetime | None:
        found = self._live.get(key)
        return found[0] if found else None

    def set(self, key: Hashable, when: datetime) -> None:
        """Fire ``key`` at ``when`` (replacing an earlier setting of it)."""
        seq = next(self._seq)
        self._live[key] = (when, seq)
        heapq.heappush(self._heap, (when, seq, key))
        if len(self._heap) > 2 * len(self._live) + 1024:
            self._compact()
        if self.waiting_for is None or when < self.waiting_for:
            self._changed.set()

    def cancel(self, key: Hashable) -> None:
        self._live.pop(key, None)

    def earliest(self) -> datetime | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            when, seq, key = heap[0]
            if self._live.get(key) == (when, seq):
                return
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [(w, s, k) for k, (w, s) in self._live.items()]
        heapq.heapify(self._heap)

    def pop_due(self, now: datetime) -> list[Hashable]:
        """Remove and return every key due at ``now``, earliest first."""
        due: list[Hashable] = []
        while (first := self.earliest()) is not None and first <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            due.append(key)
        return due

    async def run(self, fire: Callable[[Hashable], Awaitable[None]]) -> None:
        """Forever: sleep until the earliest timer, then ``await fire(key)`` for each due key.

        ``fire`` should return quickly (queue the work elsewhere).
        Cancellation stops the loop.
        """
        while True:
            self.firing = True
            try:
                for key in self.pop_due(self._clock.now()):
                    await fire(key)
            finally:
                self.firing = False
            self._changed = anyio.Event()
            earliest = self.earliest()
            if earliest is not None and earliest <= self._clock.now():
                continue
            self.waiting_for = earliest
            try:
                await self._sleep(earliest)
            finally:
                self.waiting_for = None

    async def _sleep(self, until: datetime | None) -> None:
        changed = self._changed
        if until is None:
            await changed.wait()
            return
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self._clock.sleep_until(until)
                tg.cancel_scope.cancel()

            async def waker() -> None:
                await changed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            tg.start_soon(waker)
