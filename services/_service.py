"""The shape every service shares: an async context manager over one exit stack.

A subclass implements :meth:`_start`, pushing each resource it opens (a
connection, a task group, a subscription) onto the stack it is given, in
order; it returns once the service serves. Leaving the context unwinds the
stack in reverse order. If starting fails half way, what was opened is
closed before the error propagates.

A task of the service that finds it cannot go on (the embedded stack's
nats-server keeps dying) calls :meth:`fail` rather than raising. Raising in a
task group that spans the service's life would cancel the host and run the
whole teardown cancelled: clean-up cut short, threads left behind. ``fail``
lets the host leave the context the orderly way, as a signal does; the
context then raises the error.
"""

from __future__ import annotations

import abc
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import anyio

from shared import telemetry


class Service(abc.ABC):
    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._failure: Exception | None = None
        self._failed_event: anyio.Event | None = None

    @abc.abstractmethod
    async def _start(self, stack: AsyncExitStack) -> None:
        """Open everything the service needs, pushing its clean-up onto ``stack``."""

    def fail(self, error: Exception) -> None:
        """Stop the service because of ``error`` (the first one counts): whoever
        waits in :meth:`wait_failed` leaves the context, which then raises it."""
        if self._failure is None:
            self._failure = error
        self._failed.set()

    async def wait_failed(self) -> None:
        """Return once :meth:`fail` was called: time to leave the context."""
        await self._failed.wait()

    @property
    def _failed(self) -> anyio.Event:
        # Made on first use, inside the loop: services are built before it
        # runs (``main``'s factory), and an Event belongs to a loop.
        if self._failed_event is None:
            self._failed_event = anyio.Event()
        return self._failed_event

    async def __aenter__(self) -> Self:
        try:
            # What the service opens inside keeps its own telemetry service name;
            # the caller's context gets its own back.
            with telemetry.serving_scope():
                await self._start(self._stack)
        except BaseException as exc:
            await self._stack.aclose()
            # A start given up because the service failed (its host stopped the
            # waits) ends in that failure; cancellation stays cancellation.
            if self._failure is not None and isinstance(exc, Exception):
                raise self._failure from None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        suppress = await self._stack.__aexit__(exc_type, exc, tb)
        if self._failure is not None and (exc is None or suppress):
            raise self._failure
        return suppress
