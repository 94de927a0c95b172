"""Where and when a task run executes: direct calls, ``submit`` and ``map``.

* **Calling** a task runs its pipeline in the calling thread (a sync task)
  or the awaiting coroutine (an async task) and returns its value, whatever
  the flow's executor. Outside a flow it is just the function with retries.
* **Submitting** hands the run to the flow run's executor and returns a
  :class:`TaskFuture` at once:

  ================================  ============================================
  executor / flow                   the task run executes
  ================================  ============================================
  LocalExecutor, sync flow          now, in the submitting thread
  LocalExecutor, async flow         as an asyncio task on the flow's loop (sync
                                    bodies run on the loop thread); it starts
                                    when the flow next awaits
  in-process pool (threads)         on a pool thread; an async task runs on a
                                    private event loop there
  out-of-process (Dask)             bookkeeping on a driver thread of the flow
                                    process, each attempt on the cluster
  ================================  ============================================

* **Mapping** submits one child run per element of the iterable arguments.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from engine._core.context import (
    FlowRunContext,
    Runtime,
    current_flow_run,
    current_runtime,
)
from engine._core.drive import Invoke, call_async, call_sync, drive_async, drive_sync, run_blocking
from engine._core.task_engine import Prepared, prepare, resolve_async, resolve_sync, task_steps
from engine.exceptions import MissingContextError, RunTimeout
from engine.executors import Executor, LocalExecutor, capture
from engine.futures import TaskFuture, TaskOutcome

if TYPE_CHECKING:
    from engine.tasks import Task


# --- direct calls -------------------------------------------------------------------
def call_task_sync(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Sequence[Any] | None,
    return_state: bool,
) -> Any:
    flow_ctx = current_flow_run()
    runtime = flow_ctx.runtime if flow_ctx is not None else current_runtime()
    prep = prepare(task, flow_ctx, runtime, args, kwargs, wait_for)
    params, upstream = resolve_sync(prep)
    steps = task_steps(task, prep.run, params, upstream, flow_ctx, runtime)
    outcome = drive_sync(steps, call_sync, runtime.clock)
    return outcome.state if return_state else outcome.unwrap()


async def call_task_async(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Sequence[Any] | None,
    return_state: bool,
) -> Any:
    flow_ctx = current_flow_run()
    runtime = flow_ctx.runtime if flow_ctx is not None else current_runtime()
    prep = prepare(task, flow_ctx, runtime, args, kwargs, wait_for)
    params, upstream = await resolve_async(prep)
    steps = task_steps(task, prep.run, params, upstream, flow_ctx, runtime)
    outcome = await drive_async(steps, call_async, runtime.clock)
    return outcome.state if return_state else outcome.unwrap()


# --- jobs: one whole task run as a callable -----------------------------------------
def _job_sync(
    task: Task[..., Any], prep: Prepared, flow_ctx: FlowRunContext, invoke: Any
) -> TaskOutcome:
    params, upstream = resolve_sync(prep)
    steps = task_steps(task, prep.run, params, upstream, flow_ctx, flow_ctx.runtime)
    return drive_sync(steps, invoke, flow_ctx.runtime.clock)


async def _call_inline(effect: Invoke) -> Any:
    """A sync body inside an async job: runs on the loop thread, like LocalExecutor."""
    return call_sync(effect)


async def _job_async(task: Task[..., Any], prep: Prepared, flow_ctx: FlowRunContext) -> TaskOutcome:
    params, upstream = await resolve_async(prep)
    steps = task_steps(task, prep.run, params, upstream, flow_ctx, flow_ctx.runtime)
    invoke = call_async if task.is_async else _call_inline
    return await drive_async(steps, invoke, flow_ctx.runtime.clock)


def _remote_invoker(executor: Executor) -> Any:
    """Invoke effects by running the attempt on an out-of-process executor."""

    def invoke(effect: Invoke) -> Any:
        handle = executor.submit(capture, effect.fn, *effect.args, **effect.kwargs)
        try:
            ok, value = executor.wait(handle, effect.timeout)
        except TimeoutError as exc:
            if effect.timeout is None or isinstance(exc, RunTimeout):
                raise
            raise RunTimeout(
                f"{effect.what} did not finish within its timeout of {effect.timeout:g} s"
            ) from None
        if not ok:
            raise value
        return value

    return invoke


def submit_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Sequence[Any] | None,
    map_index: int | None = None,
    task_key: str | None = None,
) -> TaskFuture[Any]:
    """Create a task run and hand it to the flow run's executor (see the module docstring)."""
    flow_ctx = current_flow_run()
    if flow_ctx is None:
        raise MissingContextError(
            f"{task.name}.submit() and .map() need a running flow; call the task directly"
        )
    runtime: Runtime = flow_ctx.runtime
    prep = prepare(task, flow_ctx, runtime, args, kwargs, wait_for, map_index, task_key)
    executor = flow_ctx.executor()
    handle: Any
    if isinstance(executor, LocalExecutor) and flow_ctx.flow.is_async and _loop_running():
        handle = asyncio.get_running_loop().create_task(_job_async(task, prep, flow_ctx))
    else:
        if not executor.in_process:
            job = functools.partial(_job_sync, task, prep, flow_ctx, _remote_invoker(executor))
        elif task.is_async:
            job = functools.partial(_run_async_job, task, prep, flow_ctx)
        else:
            job = functools.partial(_job_sync, task, prep, flow_ctx, call_sync)
        # Copy the context: executor threads must see the flow run (and log_prints).
        run_in_context = contextvars.copy_context().run
        if executor.in_process:
            handle = executor.submit(run_in_context, job)
        else:
            handle = flow_ctx.driver_pool().submit(run_in_context, job)
    future: TaskFuture[Any] = TaskFuture(prep.run, handle, executor.wait)
    flow_ctx.futures.append(future)
    return future


def _run_async_job(task: Task[..., Any], prep: Prepared, flow_ctx: FlowRunContext) -> TaskOutcome:
    return run_blocking(_job_async(task, prep, flow_ctx))


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# --- map ----------------------------------------------------------------------------
class unmapped:
    """Wraps an argument of ``task.map`` that every child run gets whole."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _mapped(value: Any) -> tuple[bool, Any]:
    """(True, items) for an argument to map over, else (False, value as is)."""
    if isinstance(value, unmapped):
        return False, value.value
    if isinstance(value, TaskFuture):
        value = value.result()  # map over what the upstream returned
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        return False, value
    return True, list(value)


def map_task(
    task: Task[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Sequence[Any] | None,
) -> list[TaskFuture[Any]]:
    """Submit one run per element of the iterable arguments (zipped; lengths must match).

    Strings, bytes and mappings are passed whole, as is anything in
    ``unmapped(...)``. A future argument is waited for and its value mapped.
    """
    flow_ctx = current_flow_run()
    if flow_ctx is None:
        raise MissingContextError(f"{task.name}.map() needs a running flow")
    pos = [_mapped(a) for a in args]
    kw = {k: _mapped(v) for k, v in kwargs.items()}
    lengths = {f"argument {i}": len(v) for i, (m, v) in enumerate(pos) if m}
    lengths.update({k: len(v) for k, (m, v) in kw.items() if m})
    if not lengths:
        raise TypeError(f"{task.name}.map() needs at least one iterable argument")
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise ValueError(f"{task.name}.map() got iterables of different lengths ({sizes})")
    n = next(iter(lengths.values()))
    # One key for the whole map call, so a later map of another length does
    # not shift the keys of the calls after it.
    key = flow_ctx.next_task_key(task.name)
    return [
        submit_task(
            task,
            tuple(v[i] if m else v for m, v in pos),
            {k: (v[i] if m else v) for k, (m, v) in kw.items()},
            wait_for,
            map_index=i,
            task_key=f"{key}[{i}]",
        )
        for i in range(n)
    ]
