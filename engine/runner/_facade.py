"""The Runner's blocking methods, for plain code: ``runner.add_flow(...)``, ``runner.start()``.

Each one runs its ``a``-prefixed twin (:mod:`engine.runner._runner`) to the
end on an event loop of its own. Called where an event loop already runs, a
blocking method raises RuntimeError naming the twin to await instead: it
never returns an un-awaited coroutine that would do nothing.

``stop()``, ``cancel_all()`` and a background run's ``cancel()`` act on a
runner that runs elsewhere (``start()`` blocking in another thread, or the
thread of :meth:`execute_in_background`): they hand the call to that
runner's event loop.

Mixed into :class:`~engine.runner._runner.Runner`; uses its state, declared here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

if TYPE_CHECKING:
    from engine.deployments import RunnerDeployment
    from engine.flows import Flow
    from engine.runner._runner import Runner
    from shared.models import FlowRun

__all__ = ["BackgroundRun"]

T = TypeVar("T")


def _in_event_loop() -> bool:
    # Sluice runs on asyncio only (anyio's asyncio backend, uvloop included).
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _blocking(name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    if _in_event_loop():
        raise RuntimeError(
            f"Runner.{name}() blocks and cannot run inside an event loop; "
            f"in async code use `await runner.a{name}(...)`"
        )
    return anyio.run(fn, *args)


class BackgroundRun:
    """A flow run executing on a thread of its own (:meth:`Runner.execute_in_background`).

    ``wait(timeout)`` returns the run as it ended (TimeoutError if it has
    not ended in time); ``cancel()`` cancels the run (it ends Cancelled) and
    ``done()`` says whether its process has ended.
    """

    def __init__(self, runner: Runner, flow_run_id: str) -> None:
        self.flow_run_id = flow_run_id
        self._runner = runner
        self._future: concurrent.futures.Future[FlowRun] = concurrent.futures.Future()
        self._token: Any = None
        self.on_runner_loop = False
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"sluice-run-{flow_run_id[:8]}", daemon=True
        )
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        runner = self._runner
        #: A started runner's own loop runs it: its processes, kills and
        #: cancellations then all live on that one loop.
        self.on_runner_loop = runner.started and runner._token is not None

        async def execute() -> FlowRun:
            self._token = anyio.lowlevel.current_token()
            self._ready.set()
            return await runner.aexecute_flow_run(self.flow_run_id)

        try:
            if self.on_runner_loop:
                self._token = runner._token
                self._ready.set()
                result = anyio.from_thread.run(
                    runner.aexecute_flow_run, self.flow_run_id, token=runner._token
                )
            else:
                result = anyio.run(execute)
            self._future.set_result(result)
        except BaseException as exc:  # handed to whoever waits
            self._future.set_exception(exc)
        finally:
            self._ready.set()

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> FlowRun:
        """The run as it ended; raises what executing it raised, or TimeoutError."""
        return self._future.result(timeout)

    def cancel(self) -> None:
        """Cancel the run: it goes to Cancelling, its process is killed, it ends Cancelled."""
        if self._future.done() or self._token is None:
            return
        anyio.from_thread.run(self._runner.acancel_run, self.flow_run_id, token=self._token)


class _Facade:
    """The blocking twins of the Runner's async methods (see the module docstring)."""

    name: str
    _started: bool
    _token: Any
    _active: dict[str, Any]
    _background: list[BackgroundRun]

    @property
    def _me(self) -> Runner:
        return cast("Runner", self)  # a mixin of the Runner only

    def add_deployment(self, deployment: RunnerDeployment) -> str:
        """Blocking :meth:`aadd_deployment`."""
        return _blocking("add_deployment", self._me.aadd_deployment, deployment)

    def serve_deployment(self, ref: str) -> str:
        """Blocking :meth:`aserve_deployment`."""
        return _blocking("serve_deployment", self._me.aserve_deployment, ref)

    def add_flow(self, flow: Flow[Any, Any], name: str | None = None, **kwargs: Any) -> str:
        """Blocking :meth:`aadd_flow`: serve ``flow`` as a deployment; returns its id."""

        async def add() -> str:
            return await self._me.aadd_flow(flow, name, **kwargs)

        return _blocking("add_flow", add)

    def execute_flow_run(self, flow_run_id: str) -> FlowRun:
        """Blocking :meth:`aexecute_flow_run` (on the runner's loop if it is started)."""
        if self._started and self._token is not None and not _in_event_loop():
            return anyio.from_thread.run(self._me.aexecute_flow_run, flow_run_id, token=self._token)
        return _blocking("execute_flow_run", self._me.aexecute_flow_run, flow_run_id)

    def execute_in_background(self, flow_run_id: str) -> BackgroundRun:
        """Execute a run on a thread of its own and return at once with its handle.

        The handle waits for the run (``wait()``) or cancels it (``cancel()``).
        """
        handle = BackgroundRun(self._me, flow_run_id)
        self._background = [h for h in self._background if not h.done()] + [handle]
        return handle

    def start(self, run_once: bool = False) -> None:
        """Blocking :meth:`astart`: take and run work until stopped.

        In the main thread, SIGINT (Ctrl-C) and SIGTERM stop the runner: the
        first drains (see :meth:`astart`), a second kills the runs at once.
        From another thread, :meth:`stop` stops it.
        """
        if _in_event_loop():
            raise RuntimeError(
                "Runner.start() blocks and cannot run inside an event loop; "
                "in async code use `await runner.astart()`"
            )
        anyio.run(self._start_until_signal, run_once)

    async def _start_until_signal(self, run_once: bool) -> None:
        if threading.current_thread() is not threading.main_thread():
            await self._me.astart(run_once)  # signals reach only the main thread
            return
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await self._me.astart(run_once)
                    tg.cancel_scope.cancel()

                tg.start_soon(run)
                async for _ in signals:
                    if not self._started:  # interrupted while still starting
                        tg.cancel_scope.cancel()
                        break
                    await self._me.astop()  # the first drains; the next kills at once

    def stop(self, now: bool = False) -> None:
        """Stop a runner that :meth:`start` runs in another thread (see :meth:`astop`).

        Raises RuntimeError if the runner is not started, or when called in
        an event loop (await :meth:`astop` there).
        """
        if _in_event_loop():
            raise RuntimeError(
                "Runner.stop() blocks and cannot run inside an event loop; "
                "in async code use `await runner.astop()`"
            )
        if not self._started or self._token is None:
            raise RuntimeError(f"runner {self.name!r} is not started; start it first")
        anyio.from_thread.run(self._me.astop, now, token=self._token)

    def cancel_all(self) -> None:
        """Cancel every run in progress on this runner (see :meth:`acancel_all`)."""
        if _in_event_loop():
            raise RuntimeError(
                "Runner.cancel_all() blocks and cannot run inside an event loop; "
                "in async code use `await runner.acancel_all()`"
            )
        if self._started and self._token is not None:
            anyio.from_thread.run(self._me.acancel_all, token=self._token)
        # Runs on background threads' own loops: each is cancelled on its loop.
        for handle in list(self._background):
            if not handle.on_runner_loop:
                handle.cancel()
