"""The flow-run pipeline: from a flow call to a final state.

1. **Created** — parameters are bound (and validated against the type hints
   when ``validate_parameters``), the run is created in PENDING and reported
   (the reporter may give it the id the stack stored). An existing run
   (:class:`ExistingRun`: ``python -m engine`` executing a stored run) is
   not created again; its stored parameters are bound the same way.
   Bad parameters: the run is proposed FAILED with a message naming the
   parameter and the body never runs.
2. **Running** — RUNNING is proposed; a REJECT ends the run in the state the
   orchestrator returned, without running the body.
3. **Body** — the function runs (with ``timeout_seconds``: a sync body on a
   helper thread that is abandoned on timeout, an async one cancelled), then
   every task run it submitted is waited for, and futures it returns are
   replaced by their values.
4. **Final state** — an exception ends the attempt FAILED (TimedOut for a
   timeout). A normal return is COMPLETED (its value kept by the runtime's
   result store, if any: :mod:`engine.results`), except that a body returning
   ``None`` while some of its task runs or subflows failed (TriggerFailed
   excluded) ends FAILED, listing them: no failure goes unnoticed because
   nobody asked for its result.
5. **Retries** — a failed attempt with retries left proposes
   AwaitingRetry, sleeps, proposes Retrying and runs the whole body again.
   A sync body that timed out is not retried: it may still be running on
   its abandoned thread, and two copies must not run at once.

Every proposal goes through the runtime's reporter and is honoured as
:mod:`engine._core.reporting` describes (WAIT sleeps and asks again, ABORT
raises :class:`~engine.exceptions.Abort`).

With tracing on (:mod:`shared.telemetry`), a flow run is one span
(``flow <name>``) that is current while it runs, so its task runs,
subflows and proposals are its children; it ends with the final state as
attributes, failed when the run did not complete.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from engine import states
from engine._core.context import (
    _DEFAULT_RUNTIME,
    FlowRunContext,
    Runtime,
    _flow_var,
    _task_var,
    current_flow_run,
    installed_runtime,
    stack_configured,
)
from engine._core.drive import Invoke, call_async, call_sync, drive_async, drive_sync
from engine._core.flow_result import ExistingRun, FlowRunResult
from engine._core.flow_steps import FAILED_TYPES, End, flow_steps
from engine._core.logs import reset_log_prints, set_log_prints
from engine._core.reporting import FlowRunInfo
from engine._core.task_engine import new_id
from engine.exceptions import ParameterError, RunTimeout
from engine.futures import TaskFuture, collect_futures, substitute
from shared import telemetry
from shared.states import StateType

if TYPE_CHECKING:
    from engine._core.start import StartTasks
    from engine.flows import Flow

__all__ = ["ExistingRun", "FlowRunResult", "run_flow_async", "run_flow_sync"]


# --- starting and finishing -----------------------------------------------------------
def _runtime_for(parent: FlowRunContext | None) -> tuple[Runtime, Callable[[], None] | None]:
    """The runtime of a new run, and how to close it when the run opened it itself.

    See the configured-stack rule in :mod:`engine._core.context`.
    """
    if parent is not None:
        return parent.runtime, None
    installed = installed_runtime()
    if installed is not None:
        return installed, None
    if stack_configured():
        from engine._stack.reporter import open_stack_runtime  # needs nats: imported only when used

        return open_stack_runtime()
    return _DEFAULT_RUNTIME, None


def _start(
    flow: Flow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_tasks: Iterable[Any],
    existing: ExistingRun | None = None,
    start: StartTasks | None = None,
) -> tuple[FlowRunContext, ParameterError | None]:
    parent = current_flow_run()
    runtime, close_runtime = _runtime_for(parent)
    earlier = None
    if start is not None:  # before the run exists: a bad from_run creates nothing
        try:
            earlier = start.load(runtime.reporter, flow.name)
        except BaseException:
            if close_runtime is not None:
                close_runtime()
            raise
    error: ParameterError | None = None
    if existing is not None:
        args, kwargs = (), dict(existing.run.parameters)
    try:
        params = flow.signature.bind(args, kwargs)
        if flow.validate_parameters:
            params = flow.signature.validate(params)
    except ParameterError as exc:
        error, params = exc, dict(kwargs)
    if existing is not None:
        run = existing.run
        run.parameters = params
    else:
        run_id = new_id()
        run = FlowRunInfo(
            id=run_id,
            name=f"{flow.name}-{run_id[:8]}",
            flow_name=flow.name,
            state=states.Pending(timestamp=runtime.clock.now()),
            parameters=params,
            parent_flow_run_id=parent.run.id if parent is not None else None,
        )
        try:
            run = runtime.reporter.flow_run_created(run) or run
        except BaseException:
            if close_runtime is not None:
                close_runtime()
            raise
    log_prints = (
        flow.log_prints if flow.log_prints is not None else bool(parent and parent.log_prints)
    )
    fctx = FlowRunContext(
        flow=flow,
        run=run,
        runtime=runtime,
        executor=flow.executor,
        log_prints=log_prints,
        parent=parent,
        return_tasks=frozenset(return_tasks),
    )
    if existing is not None:
        fctx.resume = existing.resume
    if start is not None:
        fctx.start = start
        fctx.resume = earlier or fctx.resume
    if close_runtime is not None:
        fctx.on_close(close_runtime)  # registered first, so closed after the executor
    return fctx, error


def _finish(fctx: FlowRunContext, end: End) -> FlowRunResult[Any]:
    parent = fctx.parent
    if parent is not None and end.state.type in FAILED_TYPES:
        parent.failures.append((fctx.run.name, end.state, end.exception))
    task_runs = {key: tuple(runs) for key, runs in fctx.task_runs.items()}
    return FlowRunResult(fctx.run, end.state, task_runs, end.value, end.exception)


def _enter(fctx: FlowRunContext) -> list[Any]:
    return [_flow_var.set(fctx), _task_var.set(None), set_log_prints(fctx.log_prints)]


def _leave(tokens: list[Any]) -> None:
    reset_log_prints(tokens[2])
    _task_var.reset(tokens[1])
    _flow_var.reset(tokens[0])


def _close(fctx: FlowRunContext) -> None:
    fctx.close(RunTimeout("flow run timed out") if fctx.abandoned.is_set() else None)


def _flow_span(flow: Flow[..., Any]) -> contextlib.AbstractContextManager[Any]:
    return telemetry.span(f"flow {flow.name}", attributes={"sluice.flow.name": flow.name})


def _record(span: Any, result: FlowRunResult[Any]) -> None:
    """The run and its final state on the flow run's span; failed unless it completed."""
    if span is None:
        return
    state = result.state
    span.set_attributes(
        {
            "sluice.flow_run.id": result.run.id,
            "sluice.flow_run.name": result.run.name,
            "sluice.state.type": state.type.value,
            "sluice.state.name": state.name or "",
        }
    )
    if state.type is not StateType.COMPLETED:
        failure = state.message or state.describe()
        telemetry.set_error(state.type.value.lower(), failure, result.exception)


# --- sync -------------------------------------------------------------------------------
def _returned_sync(value: Any) -> Any:
    found: list[TaskFuture[Any]] = []
    collect_futures(value, found)
    return substitute(value, {id(f): f.result() for f in found}) if found else value


def run_flow_sync(
    flow: Flow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_tasks: Iterable[Any],
    existing: ExistingRun | None = None,
    start: StartTasks | None = None,
) -> FlowRunResult[Any]:
    """Run a sync flow in this thread (``existing``: that stored run, with its
    parameters). Raises Abort if the orchestrator aborts it."""
    if telemetry.enabled():
        with _flow_span(flow) as span:
            result = _run_flow_sync(flow, args, kwargs, return_tasks, existing, start)
            _record(span, result)
            return result
    return _run_flow_sync(flow, args, kwargs, return_tasks, existing, start)


def _run_flow_sync(
    flow: Flow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_tasks: Iterable[Any],
    existing: ExistingRun | None,
    start: StartTasks | None = None,
) -> FlowRunResult[Any]:
    fctx, param_error = _start(flow, args, kwargs, return_tasks, existing, start)

    def wait_all() -> None:
        for future in list(fctx.futures):
            future.wait()

    def invoke(effect: Invoke) -> Any:
        try:
            value = call_sync(effect)
        except RunTimeout:
            fctx.abandoned.set()  # the body may still run: its later task calls refuse
            raise
        except Exception:
            wait_all()  # a failed body's task runs still finish and are reported
            raise
        wait_all()
        return _returned_sync(value)

    tokens = _enter(fctx)
    try:
        end = drive_sync(flow_steps(flow, fctx, param_error), invoke, fctx.runtime.clock)
    finally:
        _leave(tokens)
        _close(fctx)
    return _finish(fctx, end)


# --- async ------------------------------------------------------------------------------
async def _returned_async(value: Any) -> Any:
    found: list[TaskFuture[Any]] = []
    collect_futures(value, found)
    if not found:
        return value
    return substitute(value, {id(f): await f.result_async() for f in found})


async def _settle_all(fctx: FlowRunContext) -> None:
    for future in list(fctx.futures):
        await future.outcome_async()


async def _cancel_all(fctx: FlowRunContext) -> None:
    """Cancel the task runs on this loop and let them record it; leave threads be."""
    pending = [
        f.handle for f in fctx.futures if isinstance(f.handle, asyncio.Task) and not f.handle.done()
    ]
    for handle in pending:
        handle.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def run_flow_async(
    flow: Flow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_tasks: Iterable[Any],
    existing: ExistingRun | None = None,
    start: StartTasks | None = None,
) -> FlowRunResult[Any]:
    """Run an async flow on the running loop. Raises Abort if the orchestrator aborts it.

    Cancelling the caller cancels the body and the task runs it started on
    this loop, proposes CANCELLED and re-raises the cancellation.
    """
    if telemetry.enabled():
        with _flow_span(flow) as span:
            result = await _run_flow_async(flow, args, kwargs, return_tasks, existing, start)
            _record(span, result)
            return result
    return await _run_flow_async(flow, args, kwargs, return_tasks, existing, start)


async def _run_flow_async(
    flow: Flow[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    return_tasks: Iterable[Any],
    existing: ExistingRun | None,
    start: StartTasks | None = None,
) -> FlowRunResult[Any]:
    fctx, param_error = _start(flow, args, kwargs, return_tasks, existing, start)

    async def invoke(effect: Invoke) -> Any:
        try:
            value = await call_async(effect)
        except Exception as exc:
            if isinstance(exc, RunTimeout):
                await _cancel_all(fctx)
            else:
                await _settle_all(fctx)  # a failed body's task runs still finish
            raise
        except BaseException:
            await _cancel_all(fctx)
            raise
        await _settle_all(fctx)
        return await _returned_async(value)

    tokens = _enter(fctx)
    try:
        end = await drive_async(flow_steps(flow, fctx, param_error), invoke, fctx.runtime.clock)
    finally:
        _leave(tokens)
        _close(fctx)
    return _finish(fctx, end)
