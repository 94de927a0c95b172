"""Driving the engine's step generators, in a thread or on an event loop.

The task and flow pipelines are written once, as generators that decide
what happens next and yield one of two effects:

* :class:`Invoke` — call the user's function; the driver sends back
  ``(value, None)`` or ``(None, exception)``. An exception that is not an
  ``Exception`` (KeyboardInterrupt, cancellation) is thrown into the
  generator, which records it and lets it propagate.
* :class:`Sleep` — resume at or after ``until`` on the runtime clock.

:func:`drive_sync` and :func:`drive_async` carry the effects out. That keeps
one copy of the rules (retries, caching, triggers, proposals) for sync and
async code, and the generators themselves never block or await.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from engine.exceptions import RunTimeout
from shared.clock import Clock, SystemClock

T = TypeVar("T")


class Invoke(msgspec.Struct):
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timeout: float | None = None
    #: What runs, for messages: "task run 'add-3'".
    what: str = "the function"
    #: Set by the generator: runs around the call (context variables, log_prints).
    enter: Callable[[], Callable[[], None]] | None = None


class Sleep(msgspec.Struct, frozen=True):
    until: datetime


Effect = Invoke | Sleep
Outcome = tuple[Any, BaseException | None]
Steps = Generator[Effect, Any, T]


def drive_sync(steps: Steps[T], invoke: Callable[[Invoke], Any], clock: Clock) -> T:
    """Run ``steps`` to the end in this thread; ``invoke`` performs Invoke effects."""
    send: Any = None
    while True:
        try:
            effect = steps.send(send)
        except StopIteration as stop:
            return stop.value
        if type(effect) is Sleep:
            sleep_sync(clock, effect.until)
            send = None
            continue
        assert isinstance(effect, Invoke)
        try:
            send = (invoke(effect), None)
        except Exception as exc:
            send = (None, exc)
        except BaseException as exc:
            steps.throw(exc)  # the generator records the crash and re-raises
            raise


async def drive_async(
    steps: Steps[T], invoke: Callable[[Invoke], Awaitable[Any]], clock: Clock
) -> T:
    """Run ``steps`` to the end on the running event loop.

    Cancellation is thrown into the generator (which records it) and propagates.
    """
    send: Any = None
    while True:
        try:
            effect = steps.send(send)
        except StopIteration as stop:
            return stop.value
        if type(effect) is Sleep:
            await clock.sleep_until(effect.until)
            send = None
            continue
        assert isinstance(effect, Invoke)
        try:
            send = (await invoke(effect), None)
        except Exception as exc:
            send = (None, exc)
        except BaseException as exc:
            steps.throw(exc)
            raise


# --- invoking --------------------------------------------------------------------------
def call_sync(effect: Invoke) -> Any:
    """Call a sync function here, or on a helper thread when it has a timeout."""
    leave = effect.enter() if effect.enter is not None else None
    try:
        if effect.timeout is None:
            return effect.fn(*effect.args, **effect.kwargs)
        return call_with_timeout(effect.fn, effect.args, effect.kwargs, effect.timeout, effect.what)
    finally:
        if leave is not None:
            leave()


async def call_async(effect: Invoke) -> Any:
    """Await an async function on this loop; a timeout cancels it."""
    leave = effect.enter() if effect.enter is not None else None
    try:
        if effect.timeout is None:
            return await effect.fn(*effect.args, **effect.kwargs)
        try:
            async with asyncio.timeout(effect.timeout):
                return await effect.fn(*effect.args, **effect.kwargs)
        except TimeoutError:
            raise RunTimeout(_timeout_message(effect.what, effect.timeout)) from None
    finally:
        if leave is not None:
            leave()


def _timeout_message(what: str, timeout: float) -> str:
    return f"{what} did not finish within its timeout of {timeout:g} s"


def call_with_timeout(
    fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float, what: str
) -> T:
    """Call ``fn`` on a daemon thread and wait at most ``timeout`` seconds.

    Python cannot stop a thread: on timeout the call is abandoned (it may go
    on running in the background) and RunTimeout is raised here.
    """
    context = contextvars.copy_context()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the waiting thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"sluice-timeout:{what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RunTimeout(_timeout_message(what, timeout))
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- blocking helpers -----------------------------------------------------------------
def sleep_sync(clock: Clock, until: datetime) -> None:
    """Block this thread until ``until`` on ``clock``.

    The system clock sleeps with ``time.sleep``; any other clock has its async
    ``sleep_until`` run on a private event loop, so a test clock whose
    ``sleep_until`` returns at once (moving itself forward) makes retries
    instant. A FakeClock that waits to be advanced would wait forever here
    unless another thread advances it.
    """
    if isinstance(clock, SystemClock):
        delay = (until - clock.now()).total_seconds()
        if delay > 0:
            time.sleep(delay)
        return
    run_blocking(clock.sleep_until(until))


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code and return its result.

    Uses ``asyncio.run`` in this thread, or in a helper thread when this
    thread already runs an event loop (a sync task called from an async flow).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    context = contextvars.copy_context()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = context.run(asyncio.run, coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="sluice-run-blocking")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
