"""Futures of submitted task runs, and finding futures inside arguments.

A :class:`TaskFuture` stands for one task run handed to an executor. Its
``state`` is the run's current state; :meth:`~TaskFuture.wait` blocks until
the run is final and :meth:`~TaskFuture.result` returns its value or raises
its exception. In an async flow, ``await future`` does the same without
blocking the event loop.

Futures passed to a task, at the top of an argument or nested in lists,
tuples (named tuples too), sets and dicts (values), are the task's upstream
dependencies and are replaced by their values before it runs. Other
containers (dataclasses, Structs, custom classes) are not searched, so a
future hidden there is passed as is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import msgspec

from engine._core.reporting import TaskRunInfo
from engine.exceptions import MissingResult, TriggerFailedError, UpstreamFailed
from engine.states import NOT_READY, TRIGGER_FAILED
from shared.states import State, StateType

__all__ = ["TaskFuture", "TaskOutcome"]

T = TypeVar("T")


class TaskOutcome(msgspec.Struct, frozen=True):
    """How a task run ended: its final state and the Python value or exception."""

    state: State
    value: Any = None
    exception: BaseException | None = None

    def unwrap(self) -> Any:
        """The value when the run completed; otherwise raise what describes its end."""
        state = self.state
        if state.type is StateType.COMPLETED:
            return self.value
        if self.exception is not None:
            raise self.exception
        if state.name == NOT_READY:
            raise UpstreamFailed(state.message or "an upstream task run did not complete")
        if state.name == TRIGGER_FAILED:
            raise TriggerFailedError(state.message or "the trigger was not met")
        raise MissingResult(f"task run ended {state.describe()}: {state.message or 'no details'}")


class TaskFuture(Generic[T]):
    """A submitted task run. Thread-safe; resolve it from any thread of the flow.

    ``handle`` is what the executor returned (a ``concurrent.futures.Future``
    for the built-in executors) or an ``asyncio.Task`` for an async task run
    on the flow's event loop. ``waiter`` turns a foreign handle into a
    TaskOutcome (the executor's ``wait``).
    """

    __slots__ = ("_handle", "_outcome", "_waiter", "run")

    def __init__(
        self,
        run: TaskRunInfo,
        handle: Any,
        waiter: Callable[[Any, float | None], TaskOutcome] | None = None,
    ) -> None:
        self.run = run
        self._handle = handle
        self._waiter = waiter
        self._outcome: TaskOutcome | None = None

    def __repr__(self) -> str:
        return f"TaskFuture({self.run.name!r}, {self.run.state.describe()})"

    @property
    def handle(self) -> Any:
        """What the executor returned for this run (or the asyncio task running it)."""
        return self._handle

    @property
    def task_run_id(self) -> str:
        return self.run.id

    @property
    def name(self) -> str:
        """The task run's name (``<task name>-<n>``)."""
        return self.run.name

    @property
    def state(self) -> State:
        """The run's state right now (not necessarily final)."""
        return self.run.state

    def done(self) -> bool:
        if self._outcome is not None:
            return True
        done: Callable[[], bool] | None = getattr(self._handle, "done", None)
        return bool(done()) if done is not None else False

    def _settle(self, timeout: float | None) -> TaskOutcome:
        if self._outcome is not None:
            return self._outcome
        handle = self._handle
        if isinstance(handle, asyncio.Future):
            if not handle.done():
                raise RuntimeError(
                    f"task run {self.name!r} runs on the flow's event loop; "
                    "use `await future` (or `await future.wait_async()`) instead of blocking"
                )
            outcome = handle.result()
        elif isinstance(handle, concurrent.futures.Future):
            outcome = handle.result(timeout)
        elif self._waiter is not None:
            outcome = self._waiter(handle, timeout)
        else:  # pragma: no cover - every handle kind above is covered
            raise TypeError(f"cannot wait for a handle of type {type(handle).__name__}")
        self._outcome = outcome
        return outcome

    def wait(self, timeout: float | None = None) -> State:
        """Block until the run is final and return its final state.

        Raises TimeoutError when ``timeout`` seconds pass first.
        """
        return self._settle(timeout).state

    def result(self, timeout: float | None = None) -> T:
        """Block until the run is final; return its value or raise its exception.

        A run that never ran raises UpstreamFailed (NotReady) or
        TriggerFailedError (TriggerFailed).
        """
        return self._settle(timeout).unwrap()

    def outcome(self, timeout: float | None = None) -> TaskOutcome:
        """Block until the run is final; its state, value and exception."""
        return self._settle(timeout)

    async def outcome_async(self) -> TaskOutcome:
        """Wait for the run without blocking the event loop.

        Cancelling the caller stops the wait, not the task run.
        """
        if self._outcome is None:
            handle = self._handle
            if isinstance(handle, asyncio.Future):
                self._outcome = await asyncio.shield(handle)
            elif isinstance(handle, concurrent.futures.Future):
                self._outcome = await asyncio.wrap_future(handle)
            else:
                return await asyncio.to_thread(self._settle, None)
        return self._outcome  # type: ignore[return-value]  # set above (other threads only set it)

    async def wait_async(self) -> State:
        return (await self.outcome_async()).state

    async def result_async(self) -> T:
        return (await self.outcome_async()).unwrap()

    def __await__(self) -> Generator[Any, None, T]:
        return self.result_async().__await__()


# --- finding futures in arguments ---------------------------------------------------
_CONTAINERS = (list, tuple, set, frozenset, dict)


def collect_futures(value: Any, found: list[TaskFuture[Any]]) -> None:
    """Append every TaskFuture in ``value`` (see the module docstring) to ``found``."""
    if isinstance(value, TaskFuture):
        found.append(value)
    elif type(value) in _CONTAINERS or (isinstance(value, tuple) and hasattr(value, "_fields")):
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, TaskFuture) or type(item) in _CONTAINERS or isinstance(item, tuple):
                collect_futures(item, found)


def substitute(value: Any, resolved: dict[int, Any]) -> Any:
    """``value`` with each future replaced by ``resolved[id(future)]``; containers rebuilt."""
    if isinstance(value, TaskFuture):
        return resolved[id(value)]
    kind = type(value)
    if kind is list:
        return [substitute(v, resolved) for v in value]
    if kind is dict:
        return {k: substitute(v, resolved) for k, v in value.items()}
    if kind is set or kind is frozenset:
        return kind(substitute(v, resolved) for v in value)
    if isinstance(value, tuple):
        items = [substitute(v, resolved) for v in value]
        return kind(*items) if hasattr(value, "_fields") else kind(items)
    return value
