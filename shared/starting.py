"""A service's start that waits on the stack, and the stop that ends the wait.

A service may start long before NATS or the orchestrator answers (compose
starts everything at once), and wait as long as that takes. A stop signal
must end such a wait at once. ``serve_until_signal`` (``services._main``)
runs each start inside :func:`abandon_waits_on`; the waits check it: the
connect in :mod:`shared.connection`, and :func:`pause_while_starting`
between tries. Either raises :class:`StartAbandoned`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import anyio


class StartAbandoned(Exception):
    """A wait for the server ended because the process was told to stop
    (:func:`abandon_waits_on`): a normal exception, so whatever the waiting
    service had opened is closed the normal way."""


_abandon: ContextVar[anyio.Event | None] = ContextVar("sluice_abandon_waits", default=None)


@contextlib.contextmanager
def abandon_waits_on(event: anyio.Event) -> Iterator[None]:
    """Within this block (and the tasks it starts), a ``shared.connection.connect`` that waits
    for the server, or a :func:`pause_while_starting` between tries, raises
    StartAbandoned as soon as ``event`` is set."""
    token = _abandon.set(event)
    try:
        yield
    finally:
        _abandon.reset(token)


async def pause_while_starting(seconds: float, until: anyio.Event | None = None) -> None:
    """Wait ``seconds`` (or until ``until`` is set) between tries of a start that
    waits on the stack: a runner's first heartbeat answer, its dispatch consumer.
    Such a wait may last as long as the stack is away, so it raises
    StartAbandoned at once if the process is told to stop (:func:`abandon_waits_on`)."""
    stop = _abandon.get()
    async with anyio.create_task_group() as race:
        for event in (stop, until):
            if event is not None:
                race.start_soon(_set_ends, event, race.cancel_scope)
        await anyio.sleep(seconds)
        race.cancel_scope.cancel()
    if stop is not None and stop.is_set() and not (until is not None and until.is_set()):
        raise StartAbandoned("stopped while waiting for the stack")


async def _set_ends(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def stop_requested() -> anyio.Event | None:
    """The event that ends this start's waits, if its host set one."""
    return _abandon.get()
