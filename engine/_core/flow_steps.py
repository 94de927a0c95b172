"""The flow-run pipeline's steps: running the body, retrying it, the final state.

:func:`flow_steps` is the whole life of one flow run after it was started,
written once as a generator of :class:`~engine._core.drive.Invoke` and
:class:`~engine._core.drive.Sleep` steps, so :mod:`engine._core.flow_engine`
drives the same steps synchronously on a thread or on an event loop. See
that module's docstring for the order of states.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from engine import states
from engine._core.context import (
    FlowRunContext,
    Runtime,
)
from engine._core.drive import Invoke, Sleep, Steps
from engine._core.logs import log_ended, log_failed, log_retry, log_started
from engine._core.reporting import FlowRunInfo
from engine._core.retry import next_delay
from engine._core.task_engine import new_id
from engine.exceptions import Abort, FlowRunFailed, ParameterError, RunTimeout
from engine.results import keep_result
from shared.messages import Decision
from shared.states import State, StateType

if TYPE_CHECKING:
    from engine.flows import Flow

__all__ = ["FAILED_TYPES", "End", "flow_steps", "propose"]


FAILED_TYPES = (StateType.FAILED, StateType.CRASHED)
_MAX_LISTED = 10


class End(msgspec.Struct, frozen=True):
    state: State
    value: Any = None
    exception: BaseException | None = None


# --- the steps ------------------------------------------------------------------------
def propose(runtime: Runtime, run: FlowRunInfo, state: State) -> Generator[Sleep, None, bool]:
    """Propose until decided; True when accepted. ``run.state`` holds the outcome."""
    while True:
        answer = runtime.reporter.propose_flow_state(run, state)
        if answer.decision is Decision.WAIT:
            yield Sleep(runtime.clock.now() + timedelta(seconds=answer.delay_seconds or 0))
            continue
        if answer.decision is Decision.ABORT:
            raise Abort(answer.reason or f"the orchestrator aborted flow run {run.name!r}")
        run.state = answer.state
        return answer.decision is Decision.ACCEPT


def _failure_summary(fctx: FlowRunContext) -> tuple[str, BaseException | None]:
    failures = fctx.failures
    shown = ", ".join(
        f"{name} ({state.describe()}: {(state.message or '')[:200]})"
        for name, state, _ in failures[:_MAX_LISTED]
    )
    more = len(failures) - _MAX_LISTED
    text = f"{len(failures)} task or subflow run(s) failed: {shown}"
    first = next((exc for _, _, exc in failures if exc is not None), None)
    return text + (f" and {more} more" if more > 0 else ""), first


def flow_steps(
    flow: Flow[..., Any], fctx: FlowRunContext, param_error: ParameterError | None
) -> Steps[End]:
    runtime, run, clock = fctx.runtime, fctx.run, fctx.runtime.clock
    if param_error is not None:
        failed = states.Failed(message=str(param_error), timestamp=clock.now())
        log_failed(fctx, None, None, str(param_error))
        yield from propose(runtime, run, failed)
        return End(run.state, None, param_error)
    if not (yield from propose(runtime, run, states.Running(timestamp=clock.now()))):
        return End(run.state)
    args, kwargs = flow.signature.call_args(run.parameters)
    policy = flow.retry_policy
    what = f"flow run {run.name!r}"
    retry_count = 0
    while True:
        log_started(fctx, None, retry_count)
        try:
            value, error = yield Invoke(flow.fn, args, kwargs, flow.timeout_seconds, what)
        except GeneratorExit:
            raise
        except BaseException as exc:  # cancelled or interrupted: one report, then propagate
            end = (
                states.Cancelled(message=f"{what} was cancelled", timestamp=clock.now())
                if isinstance(exc, asyncio.CancelledError)
                else states.Crashed(
                    message=states.describe_exception(exc), timestamp=clock.now(), error=exc
                )
            )
            answer = runtime.reporter.propose_flow_state(run, end)
            run.state = answer.state
            raise
        message = None
        from_tasks = False  # their failures are in the log already, with tracebacks
        if error is None and value is None and fctx.failures:
            message, error = _failure_summary(fctx)
            error, from_tasks = error or FlowRunFailed(message), True
        if error is None:
            final = states.Completed(data=value, timestamp=clock.now())
            if runtime.results is not None:
                final = keep_result(final, value, runtime.results, f"{run.id}.{new_id()}")
        elif isinstance(error, RunTimeout):
            final = states.TimedOut(message=str(error), timestamp=clock.now(), error=error)
        else:
            message = message or states.describe_exception(error)
            final = states.Failed(message=message, timestamp=clock.now(), error=error)
        if error is not None and retry_count < policy.retries and not fctx.abandoned.is_set():
            retry_count += 1
            delay = next_delay(policy, retry_count, runtime.random())
            when = clock.now() + timedelta(seconds=delay)
            waiting = states.AwaitingRetry(
                scheduled_time=when, retry_count=retry_count, message=final.message,
                timestamp=clock.now(), error=error,
            )  # fmt: skip
            shown = None if from_tasks else error
            log_retry(fctx, None, shown, retry_count, policy.retries, delay, final.message)
            if not (yield from propose(runtime, run, waiting)):
                return End(run.state, None, error)
            if delay > 0:
                yield Sleep(when)
            retrying = states.Retrying(retry_count=retry_count, timestamp=clock.now())
            if not (yield from propose(runtime, run, retrying)):
                return End(run.state, None, error)
            fctx.failures.clear()  # a new attempt is judged on its own task runs
            fctx.futures.clear()
            fctx.restart_task_keys()
            continue
        if error is not None:
            log_failed(fctx, None, None if from_tasks else error, final.message)
        yield from propose(runtime, run, final)
        log_ended(fctx, None, run.state.describe())
        return End(run.state, value, error)
