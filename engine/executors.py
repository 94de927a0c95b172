"""Executors: where submitted task runs execute.

An executor runs callables: ``submit(fn, *args, **kwargs)`` starts
``fn(*args, **kwargs)`` and returns a handle (anything with ``done()`` and
``result(timeout)``); ``wait(handle)`` blocks for its value or raises its
exception. Executors are context managers; a flow run starts its executor on
the first ``task.submit``/``task.map`` and closes it when the run ends
(closing waits for what is still running). A flow keeps an unstarted
executor as configuration and each run uses :meth:`clone` of it, so runs
never share one.

Two kinds, told apart by ``in_process``:

* **In-process** (:class:`LocalExecutor`, :class:`SynchronousExecutor`,
  :class:`ThreadPoolExecutor`): the
  engine submits the whole task run (waiting for upstreams, trigger, cache,
  attempts, retries, state reports) as one callable.
* **Out-of-process** (:class:`DaskExecutor`): the task run's bookkeeping stays
  in the flow process (on the engine's own driver threads), and only each
  attempt — the user function and its resolved arguments — is submitted. The
  reporter, the cache store and the run context therefore never leave the
  flow process; inside a task on Dask, ``get_run_context()`` is unavailable.

Trust boundary (Dask): Dask pickles the function and its arguments to the
workers and the return value back to the client, and unpickling runs code.
That is acceptable only because both ends are the user's own code on the
user's own cluster: never point ``address`` at a scheduler that others can
reach. Nothing read from NATS or any public subject is ever unpickled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self

__all__ = [
    "ConcurrentExecutor",
    "DaskExecutor",
    "Executor",
    "LocalExecutor",
    "SynchronousExecutor",
    "ThreadPoolExecutor",
]


class Executor(Protocol):
    #: True when submitted callables run in this process and may share its memory.
    in_process: ClassVar[bool]

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop; wait for running work unless leaving because of an exception."""
        ...

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Start ``fn(*args, **kwargs)``; return a handle (``done()``, ``result(timeout)``)."""
        ...

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        """The handle's value, or raise its exception (TimeoutError after ``timeout`` s)."""
        ...

    def clone(self) -> Self:
        """A new, unstarted executor with the same settings."""
        ...


class _Done:
    """The handle of a call that already ran."""

    __slots__ = ("_exc", "_value")

    def __init__(self, value: Any, exc: BaseException | None) -> None:
        self._value = value
        self._exc = exc

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._value


class LocalExecutor:
    """Runs each callable at once, in the submitting thread. The default.

    ``submit`` returns after the call finished; an Exception is kept in the
    handle, anything else (KeyboardInterrupt…) propagates from ``submit``.
    """

    in_process: ClassVar[bool] = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return _Done(fn(*args, **kwargs), None)
        except Exception as exc:
            return _Done(None, exc)

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.result(timeout)

    def clone(self) -> Self:
        return type(self)()


class SynchronousExecutor:
    """Runs each callable in the submitting thread through Dask's synchronous scheduler.

    For debugging: everything runs in one thread, in order, so ``breakpoint()``
    in a task stops there and a traceback shows the task's own frames, while
    the call still goes through Dask's task graph and scheduling logic (as
    :class:`DaskExecutor` work does) rather than a plain call. Needs
    ``pip install dask``; dask is imported on enter. Each callable is
    wrapped whole, so Dask never looks into (or copies) its arguments.
    """

    in_process: ClassVar[bool] = True

    def __init__(self) -> None:
        self._dask: Any = None

    def __enter__(self) -> Self:
        try:
            import dask  # imported here: dask is heavy and optional
        except ImportError as exc:
            raise RuntimeError('SynchronousExecutor needs dask: pip install "dask"') from exc
        self._dask = dask
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._dask = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._dask is None:
            raise RuntimeError("the executor is not started; use it as a context manager")
        call = functools.partial(fn, *args, **kwargs)
        lazy = self._dask.delayed(call, pure=False)()
        try:
            return _Done(lazy.compute(scheduler="synchronous"), None)
        except Exception as exc:
            return _Done(None, exc)

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.result(timeout)

    def clone(self) -> Self:
        return type(self)()


class ThreadPoolExecutor:
    """Runs callables on a pool of ``max_workers`` threads (Python's default if None).

    Task runs wait for their upstreams on the worker thread that runs them.
    That cannot deadlock: the pool starts work in submission order and a
    future exists only after its task run was submitted, so every upstream
    started before any run that waits for it.
    """

    in_process: ClassVar[bool] = True

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, not {max_workers}")
        self.max_workers = max_workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def __enter__(self) -> Self:
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self.max_workers, thread_name_prefix="sluice-task"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            # Leaving on an error (a timed-out flow): drop queued work, do not wait
            # for threads Python cannot stop.
            self._pool.shutdown(wait=exc_type is None, cancel_futures=exc_type is not None)
            self._pool = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._pool is None:
            raise RuntimeError("the executor is not started; use it as a context manager")
        return self._pool.submit(fn, *args, **kwargs)

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.result(timeout)

    def clone(self) -> Self:
        return type(self)(self.max_workers)


#: Another name for :class:`ThreadPoolExecutor`.
ConcurrentExecutor = ThreadPoolExecutor


def _call_async(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run an async function to completion on a private event loop (on a Dask worker)."""
    return asyncio.run(fn(*args, **kwargs))


def capture(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    """Call ``fn`` (awaiting it if async) and return ``(True, value)`` or ``(False, exception)``.

    The engine submits attempts to out-of-process executors through this, so
    a failed attempt comes back as a value: the cluster does not log it as a
    crash, and the engine still gets the user's own exception object.
    """
    try:
        if inspect.iscoroutinefunction(fn):
            return True, asyncio.run(fn(*args, **kwargs))
        return True, fn(*args, **kwargs)
    except Exception as exc:
        return False, exc


class DaskExecutor:
    """Runs each attempt of a task on a dask.distributed cluster.

    With no ``address`` a temporary ``LocalCluster(**cluster_kwargs)`` is
    started on enter and closed on exit; with ``address`` the executor
    connects to that scheduler and leaves the cluster running. Needs
    ``pip install "dask[distributed]"``; dask is imported on enter, never
    when this module is imported. See the module docstring for the trust
    boundary.
    """

    in_process: ClassVar[bool] = False

    def __init__(
        self,
        address: str | None = None,
        *,
        cluster_kwargs: dict[str, Any] | None = None,
        client_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.client_kwargs = dict(client_kwargs or {})
        self._client: Any = None
        self._cluster: Any = None

    def __enter__(self) -> Self:
        try:
            import distributed  # imported here: dask is heavy and optional
        except ImportError as exc:
            raise RuntimeError(
                'DaskExecutor needs dask.distributed: pip install "dask[distributed]"'
            ) from exc
        if self.address is None:
            self._cluster = distributed.LocalCluster(**self.cluster_kwargs)
            self._client = distributed.Client(self._cluster, **self.client_kwargs)
        else:
            self._client = distributed.Client(self.address, **self.client_kwargs)
        return self

    def __exit__(self, *exc_info: object) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            raise RuntimeError("the executor is not started; use it as a context manager")
        if inspect.iscoroutinefunction(fn):
            call = functools.partial(_call_async, fn, *args, **kwargs)
        else:
            # A partial keeps the user's keyword arguments apart from Client.submit's own
            # (a task parameter named `key` or `workers` must reach the task).
            call = functools.partial(fn, *args, **kwargs)
        # pure=False: every attempt runs, even with arguments Dask has seen before.
        return self._client.submit(call, pure=False)

    def wait(self, handle: Any, timeout: float | None = None) -> Any:
        return handle.result(timeout)

    def clone(self) -> Self:
        return type(self)(
            self.address, cluster_kwargs=self.cluster_kwargs, client_kwargs=self.client_kwargs
        )
