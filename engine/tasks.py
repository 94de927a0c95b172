"""``@task``: a function whose calls become task runs.

    @task(retries=2, retry_delay_seconds=[1, 10])
    def load(rows: list[dict]) -> int: ...

    @flow
    def etl():
        rows = extract.submit()             # a TaskFuture; runs on the executor
        return load(rows)                   # waits for `rows`, runs here, returns a value

Inside a flow, calling a task runs it and returns its value (raising its
exception if it failed); ``submit`` returns a :class:`TaskFuture`; ``map``
returns one future per element. Outside a flow, calling a task just calls
the function, with its retries and timeout. An async task called returns a
coroutine, like the function it wraps.

The keyword arguments ``wait_for`` (futures to wait for without passing
their values) and ``return_state`` (return the final State instead of the
value) are taken by the engine and never reach the function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Iterable
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

from engine import triggers
from engine._core.context import TaskRunContext
from engine._core.params import FnSignature
from engine._core.retry import RetryPolicy
from engine._core.submit import call_task_async, call_task_sync, map_task, submit_task, unmapped
from engine.futures import TaskFuture

__all__ = ["Task", "task", "unmapped"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

CacheKeyFn = Callable[[TaskRunContext, dict[str, Any]], str | None]
_UNSET: Any = object()


class Task(Generic[P, R]):
    """A task: the function plus how its runs behave. Immutable; see :meth:`with_options`."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        tags: Iterable[str] = (),
        retries: int = 0,
        retry_delay_seconds: float | Iterable[float] = 0,
        retry_jitter_factor: float | None = None,
        timeout_seconds: float | None = None,
        cache_key_fn: CacheKeyFn | None = None,
        cache_expiration: timedelta | None = None,
        trigger: triggers.Trigger = triggers.all_successful,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@task needs a function, not {fn!r}")
        if cache_expiration is not None and not isinstance(cache_expiration, timedelta):
            raise TypeError("cache_expiration must be a datetime.timedelta")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be > 0, not {timeout_seconds}")
        delays = (
            retry_delay_seconds
            if isinstance(retry_delay_seconds, int | float)
            else list(retry_delay_seconds)
        )
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", "task"))
        self.tags: tuple[str, ...] = tuple(tags)
        self.retry_policy = RetryPolicy.build(retries, delays, retry_jitter_factor)
        self.timeout_seconds = timeout_seconds
        self.cache_key_fn = cache_key_fn
        self.cache_expiration = cache_expiration
        self.trigger = trigger
        self.signature = FnSignature.of(fn)
        self.is_async = inspect.iscoroutinefunction(fn)
        #: Identifies the function across processes (used in cache keys).
        self.key = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', self.name)}"
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"Task({self.name!r})"

    @property
    def retries(self) -> int:
        return self.retry_policy.retries

    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy with some decorator arguments changed."""
        current: dict[str, Any] = {
            "name": self.name,
            "tags": self.tags,
            "retries": self.retry_policy.retries,
            "retry_delay_seconds": list(self.retry_policy.delays),
            "retry_jitter_factor": self.retry_policy.jitter_factor,
            "timeout_seconds": self.timeout_seconds,
            "cache_key_fn": self.cache_key_fn,
            "cache_expiration": self.cache_expiration,
            "trigger": self.trigger,
        }
        unknown = set(changes) - set(current)
        if unknown:
            raise TypeError(f"unknown task options: {', '.join(sorted(unknown))}")
        return Task(self.fn, **{**current, **changes})

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task now and return its value (a coroutine for an async task).

        Raises the task's exception when it fails, UpstreamFailed when an
        upstream failed, TriggerFailedError when its trigger was not met.
        """
        wait_for: Any = None
        return_state: Any = None
        if kwargs and ("wait_for" in kwargs or "return_state" in kwargs):
            wait_for = kwargs.pop("wait_for", None)
            return_state = kwargs.pop("return_state", None)
        if self.is_async:
            return call_task_async(self, args, kwargs, wait_for, bool(return_state))  # type: ignore[return-value]
        return call_task_sync(self, args, kwargs, wait_for, bool(return_state))

    @overload
    def submit(
        self: Task[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> TaskFuture[T]: ...

    @overload
    def submit(self: Task[P, T], *args: P.args, **kwargs: P.kwargs) -> TaskFuture[T]: ...

    def submit(self, *args: Any, **kwargs: Any) -> TaskFuture[Any]:
        """Hand a run to the flow's executor; returns its future at once.

        Raises MissingContextError outside a flow.
        """
        wait_for = kwargs.pop("wait_for", None)
        return submit_task(self, args, kwargs, wait_for)

    @overload
    def map(
        self: Task[P, Coroutine[Any, Any, T]], *args: Any, **kwargs: Any
    ) -> list[TaskFuture[T]]: ...

    @overload
    def map(self: Task[P, T], *args: Any, **kwargs: Any) -> list[TaskFuture[T]]: ...

    def map(self, *args: Any, **kwargs: Any) -> list[TaskFuture[Any]]:
        """Submit one run per element of the iterable arguments; see ``map_task``.

        Raises ValueError when iterables differ in length, TypeError when none
        is iterable, MissingContextError outside a flow.
        """
        wait_for = kwargs.pop("wait_for", None)
        return map_task(self, args, kwargs, wait_for)


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    retries: int = 0,
    retry_delay_seconds: float | Iterable[float] = 0,
    retry_jitter_factor: float | None = None,
    timeout_seconds: float | None = None,
    cache_key_fn: CacheKeyFn | None = None,
    cache_expiration: timedelta | None = None,
    trigger: triggers.Trigger = triggers.all_successful,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Any = None, /, **options: Any) -> Any:
    """Make a function a task; use bare (``@task``) or with options (``@task(retries=3)``).

    Options: ``name``, ``tags``, ``retries``, ``retry_delay_seconds`` (a
    number, or a list of per-retry delays whose last one repeats),
    ``retry_jitter_factor``, ``timeout_seconds``, ``cache_key_fn(context,
    parameters) -> key | None``, ``cache_expiration`` (timedelta; None keeps
    entries forever), ``trigger`` (see :mod:`engine.triggers`).
    """
    if fn is None:
        return lambda f: Task(f, **options)
    return Task(fn, **options)
