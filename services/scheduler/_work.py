"""Running the scheduler's actions: queued, bounded, counted, and never fatal.

Every action (materialize a schedule, offer a run, mark one Late, sweep
removed runs) is a small coroutine function put on a lane's queue; at most
``limit`` run at once, in the order they were queued (so decisions taken
at the start of an action are taken in time order). Queuing never waits,
so the timer loop is never held up by a busy lane. A failure is logged and
dropped: the state it was about is re-read on the next pass or event, so
one bad deployment cannot stop the service. ``in_flight`` (queued or
running) lets the service say when it is idle.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import anyio.abc
import nats.errors

from shared.errors import SluiceError

__all__ = ["Action", "Work"]

log = logging.getLogger("sluice.scheduler")

Action = Callable[[], Awaitable[None]]


class Work:
    def __init__(self, tg: anyio.abc.TaskGroup, limit: int) -> None:
        self._tg = tg
        self._limit = limit
        self._queue: deque[tuple[Action, str]] = deque()
        self._running = 0
        self.in_flight = 0

    def spawn(self, action: Action, what: str) -> None:
        """Queue ``action``; it starts once fewer than ``limit`` are running."""
        self.in_flight += 1
        self._queue.append((action, what))
        if self._running < self._limit:
            self._running += 1
            self._tg.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while self._queue:
                action, what = self._queue.popleft()
                try:
                    await self._call(action, what)
                finally:
                    self.in_flight -= 1
        finally:
            self._running -= 1

    @staticmethod
    async def _call(action: Action, what: str) -> None:
        try:
            await action()
        except SluiceError as exc:
            log.warning("%s: %s", what, exc.message)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("%s: NATS trouble (%s)", what, exc or type(exc).__name__)
        except Exception:
            log.exception("%s failed", what)
