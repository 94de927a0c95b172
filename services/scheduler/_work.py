"""Running the scheduler's actions: bounded, counted, and never fatal.

Every action (materialize a schedule, offer a run, mark one Late, sweep
removed runs) is a small coroutine run in the service's task group, at most
``limit`` at a time. A failure is logged and dropped: the state it was
about is re-read on the next pass or event, so one bad deployment cannot
stop the service. ``in_flight`` lets the service say when it is idle.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import nats.errors

from shared.errors import SluiceError

__all__ = ["Action", "Work"]

log = logging.getLogger("sluice.scheduler")

Action = Callable[[], Awaitable[None]]


class Work:
    def __init__(self, tg: anyio.abc.TaskGroup, limit: int) -> None:
        self._tg = tg
        self._limiter = anyio.CapacityLimiter(limit)
        self.in_flight = 0

    async def submit(self, action: Action, what: str) -> None:
        """Start ``action`` once a slot is free (waits while ``limit`` are running)."""
        self.in_flight += 1
        token = object()
        try:
            await self._limiter.acquire_on_behalf_of(token)
        except BaseException:
            self.in_flight -= 1
            raise
        self._tg.start_soon(self._run, action, what, token)

    def spawn(self, action: Action, what: str) -> None:
        """Start ``action`` now, from code that cannot wait; it queues for a slot."""
        self.in_flight += 1
        self._tg.start_soon(self._queued, action, what)

    async def _queued(self, action: Action, what: str) -> None:
        token = object()
        try:
            await self._limiter.acquire_on_behalf_of(token)
        except BaseException:
            self.in_flight -= 1
            raise
        await self._run(action, what, token)

    async def _run(self, action: Action, what: str, token: object) -> None:
        try:
            await action()
        except SluiceError as exc:
            log.warning("%s: %s", what, exc.message)
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            log.warning("%s: NATS trouble (%s)", what, exc or type(exc).__name__)
        except Exception:
            log.exception("%s failed", what)
        finally:
            self._limiter.release_on_behalf_of(token)
            self.in_flight -= 1
