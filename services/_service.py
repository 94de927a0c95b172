"""The shape every service shares: an async context manager over one exit stack.

A subclass implements :meth:`_start`, pushing each resource it opens (a
connection, a task group, a subscription) onto the stack it is given, in
order; it returns once the service serves. Leaving the context unwinds the
stack in reverse order. If starting fails half way, what was opened is
closed before the error propagates.
"""

from __future__ import annotations

import abc
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from shared import telemetry


class Service(abc.ABC):
    def __init__(self) -> None:
        self._stack = AsyncExitStack()

    @abc.abstractmethod
    async def _start(self, stack: AsyncExitStack) -> None:
        """Open everything the service needs, pushing its clean-up onto ``stack``."""

    async def __aenter__(self) -> Self:
        try:
            # What the service opens inside keeps its own telemetry service name;
            # the caller's context gets its own back.
            with telemetry.serving_scope():
                await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)
