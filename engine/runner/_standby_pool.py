"""Standby flow-run processes kept ready by a subprocess flow runner.

Each standby is a fresh ``python -m engine.runner._standby`` that has imported the
engine and waits on its stdin for one run (see
:mod:`engine.runner._standby`). The pool keeps at most ``size`` of them, one per
*launch key* — the interpreter, the environment and the folder a process
starts with — because a standby can only take a run that would have started
exactly like it. Taking one starts its replacement in the background, so a
steady stream of runs always finds one ready; the oldest waits least long
when keys compete.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Hashable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

__all__ = ["StandbyPool"]

Launch = Callable[[], Awaitable[anyio.abc.Process]]
#: How long a standby told to go may take to exit before it is killed.
_STOP_GRACE = 5.0


async def _stop(process: anyio.abc.Process) -> None:
    """Close the standby's stdin (it exits by itself), then make sure it is gone."""
    if process.stdin is not None:
        with contextlib.suppress(Exception):
            await process.stdin.aclose()
    with anyio.move_on_after(_STOP_GRACE):
        await process.wait()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


class StandbyPool:
    """At most ``size`` started processes waiting for a run, by launch key."""

    def __init__(
        self, size: int, forget: Callable[[anyio.abc.Process], None] | None = None
    ) -> None:
        self.size = size
        #: Called with each process the pool stops unused (to release what goes with it).
        self._forget = forget
        self._waiting: dict[Hashable, anyio.abc.Process] = {}
        self._starting: set[Hashable] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        try:
            stack.push_async_callback(self._stop_waiting)  # runs last: after the starters
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._tg = stack, tg
        return self

    async def __aexit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._tg = None
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def _stop_waiting(self) -> None:
        with anyio.CancelScope(shield=True):
            waiting, self._waiting = list(self._waiting.values()), {}
            async with anyio.create_task_group() as stoppers:
                for process in waiting:
                    stoppers.start_soon(self._stop, process)

    async def _stop(self, process: anyio.abc.Process) -> None:
        await _stop(process)
        if self._forget is not None:
            self._forget(process)

    def take(self, key: Hashable) -> anyio.abc.Process | None:
        """A waiting process started with ``key``, or None (the caller starts one)."""
        process = self._waiting.pop(key, None)
        if process is not None and process.returncode is not None:
            if self._forget is not None:
                self._forget(process)
            return None  # it gave up waiting (it failed to start)
        return process

    def refill(self, key: Hashable, launch: Launch) -> None:
        """Start a process for ``key`` in the background, unless one waits or is starting."""
        if self._tg is None or self.size <= 0:
            return
        if key in self._waiting or key in self._starting:
            return
        self._starting.add(key)
        self._tg.start_soon(self._start, key, launch)

    async def _start(self, key: Hashable, launch: Launch) -> None:
        try:
            try:
                process = await launch()
            except Exception:
                return  # no standby this time; the next run starts its own process
            while len(self._waiting) >= self.size:
                oldest = next(iter(self._waiting))
                assert self._tg is not None
                self._tg.start_soon(self._stop, self._waiting.pop(oldest))
            self._waiting[key] = process
        finally:
            self._starting.discard(key)
