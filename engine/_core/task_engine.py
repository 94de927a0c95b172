"""The task-run pipeline: from a task call to a final state.

One task run goes through these steps, written once in :func:`task_steps`
(a generator, see :mod:`engine._core.drive`) and carried out by a sync or async
driver:

1. **Created** — a :class:`TaskRunInfo` in PENDING is reported, with its
   ``task_key`` (the call's identity across attempts of the flow run).
2. **Upstreams** — every future among the arguments or in ``wait_for`` is
   waited for (by the driver, before the steps start).
3. **Resume** — when the flow run resumes an earlier attempt
   (:mod:`engine._core.resume`) and that attempt kept this key's result, the run
   ends COMPLETED/Resumed with it; nothing below happens.
4. **Trigger** — only when there are upstreams. Not met: ``all_successful``
   ends PENDING/NotReady (an upstream failure propagating), any other
   trigger FAILED/TriggerFailed; the message names the upstream runs.
5. **Cache lookup** — with ``cache_key_fn``: a fresh entry under the key ends
   the run COMPLETED/Cached with the stored value; the function is not called.
6. **Attempts** — RUNNING (Retrying from the 2nd attempt), call the function.
   On an exception with retries left: SCHEDULED/AwaitingRetry with
   ``scheduled_time`` and ``retry_count``, sleep on the runtime clock, again.
   Out of retries: FAILED (TimedOut for a timeout) keeping the exception.
7. **Cache store and completion** — on success the value is stored under the
   key until ``now + cache_expiration``, then COMPLETED. With a result store
   in the runtime, the COMPLETED (or Cached) state keeps the value as
   :mod:`engine.results` says.

A failed upstream whose value is an argument of a task that runs anyway
(because its trigger allows it) is passed as its exception object.
Failures (other than TriggerFailed) are recorded on the flow run, which
uses them for its final state.

How submitted runs are scheduled is decided in :mod:`engine._core.submit`.

With tracing on (:mod:`shared.telemetry`), a task run inside a flow run is
one span (``task <name>``), child of the flow run's span: current while the
function runs (spans the function opens nest under it), its states as span
events, its final state as attributes, failed when the run failed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from engine import states, triggers
from engine._core.cache import CacheEntry
from engine._core.context import FlowRunContext, Runtime, TaskRunContext, _task_var
from engine._core.drive import Invoke, Sleep, Steps
from engine._core.logs import log_ended, log_failed, log_retry, log_started
from engine._core.reporting import TaskRunInfo
from engine._core.retry import next_delay
from engine.exceptions import MissingResult, RunTimeout, TriggerFailedError, UpstreamFailed
from engine.futures import TaskFuture, TaskOutcome, collect_futures, substitute
from engine.results import keep_result, load_result
from shared import telemetry
from shared.states import State, StateDetails, StateType

if TYPE_CHECKING:
    from engine.tasks import Task

_FAILED_TYPES = (StateType.FAILED, StateType.CRASHED)
_MAX_LISTED = 10
log = logging.getLogger("sluice.engine")
# Which upstreams a message names when a trigger other than all_successful fails:
# for triggers that wanted failures, the ones that completed, and the reverse.
_CULPRITS: dict[Callable[..., bool], Callable[[State], bool]] = {
    triggers.any_failed: states.is_completed,
    triggers.all_failed: states.is_completed,
    triggers.any_successful: lambda s: not states.is_completed(s),
}


def new_id() -> str:
    return str(uuid.uuid4())


class Prepared(msgspec.Struct):
    """A created task run, before its upstreams are resolved."""

    run: TaskRunInfo
    params: dict[str, Any]
    #: Upstream futures; the first ``n_data`` of them appear in ``params``.
    upstream: list[TaskFuture[Any]]
    n_data: int


def prepare(
    task: Task[..., Any],
    flow_ctx: FlowRunContext | None,
    runtime: Runtime,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Sequence[Any] | None,
    map_index: int | None = None,
    task_key: str | None = None,
) -> Prepared:
    """Bind the arguments and create the task run (reported when inside a flow).

    ``task_key`` is given for the children of a map; otherwise the flow run
    assigns the next key of this task name.
    """
    params = task.signature.bind(args, kwargs)
    upstream: list[TaskFuture[Any]] = []
    for value in params.values():
        collect_futures(value, upstream)
    n_data = len(upstream)
    if wait_for:
        collect_futures(list(wait_for), upstream)
    now = runtime.clock.now()
    run = TaskRunInfo(
        id=new_id(),
        name=flow_ctx.next_task_run_name(task.name) if flow_ctx else task.name,
        task_name=task.name,
        state=states.Pending(timestamp=now),
        flow_run_id=flow_ctx.run.id if flow_ctx else None,
        map_index=map_index,
        upstream_ids=tuple(f.run.id for f in upstream),
        tags=task.tags,
        task_key=(task_key or flow_ctx.next_task_key(task.name)) if flow_ctx else "",
    )
    if flow_ctx is not None:
        if flow_ctx.abandoned.is_set():
            raise RunTimeout(f"flow run {flow_ctx.run.name!r} timed out; {run.name} not started")
        if flow_ctx.start is not None:  # roles follow call order (engine._core.start)
            flow_ctx.start.assign(run)
        runtime.reporter.task_run_created(run)
        flow_ctx.record_task_run(task, run)
    return Prepared(run, params, upstream, n_data)


def _value_of(outcome: TaskOutcome) -> Any:
    """What a resolved upstream argument becomes."""
    if outcome.state.type is StateType.COMPLETED:
        return outcome.value
    if outcome.exception is not None:
        return outcome.exception
    if outcome.state.name == states.TRIGGER_FAILED:
        return TriggerFailedError(outcome.state.message or "trigger not met")
    return UpstreamFailed(outcome.state.message or "upstream did not complete")


def _resolved(
    prep: Prepared, outcomes: list[TaskOutcome]
) -> tuple[dict[str, Any], dict[str, State]]:
    upstream_states = {f.name: o.state for f, o in zip(prep.upstream, outcomes, strict=True)}
    if prep.n_data == 0:
        return prep.params, upstream_states
    values = {id(f): _value_of(o) for f, o in zip(prep.upstream, outcomes, strict=True)}
    return {k: substitute(v, values) for k, v in prep.params.items()}, upstream_states


def resolve_sync(prep: Prepared) -> tuple[dict[str, Any], dict[str, State]]:
    """Block until every upstream is final; parameters with futures replaced."""
    if not prep.upstream:
        return prep.params, {}
    return _resolved(prep, [f.outcome() for f in prep.upstream])


async def resolve_async(prep: Prepared) -> tuple[dict[str, Any], dict[str, State]]:
    if not prep.upstream:
        return prep.params, {}
    return _resolved(prep, [await f.outcome_async() for f in prep.upstream])


def _listing(items: Sequence[tuple[str, State]]) -> str:
    def one(name: str, state: State) -> str:
        note = f": {state.message[:200]}" if state.message else ""
        return f"{name} ({state.describe()}{note})"

    shown = ", ".join(one(n, s) for n, s in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def trigger_state(trigger: triggers.Trigger, upstream: Mapping[str, State], now: datetime) -> State:
    """The final state of a task run whose trigger was not met."""
    if trigger is triggers.all_successful:
        bad = [(n, s) for n, s in upstream.items() if not states.is_completed(s)]
        return states.NotReady(
            message=f"not run: upstream task runs did not complete: {_listing(bad)}",
            timestamp=now,
        )
    pick = _CULPRITS.get(trigger, lambda s: True)
    culprits = [(n, s) for n, s in upstream.items() if pick(s)]
    name = getattr(trigger, "__name__", repr(trigger))
    return states.TriggerFailed(
        message=f"not run: trigger {name} not met by upstream task runs {_listing(culprits)}",
        timestamp=now,
    )


def task_steps(
    task: Task[..., Any],
    run: TaskRunInfo,
    params: dict[str, Any],
    upstream: Mapping[str, State],
    flow_ctx: FlowRunContext | None,
    runtime: Runtime,
) -> Steps[TaskOutcome]:
    """The pipeline of one task run, from resolved upstreams to its final outcome.

    Outside a flow (``flow_ctx`` None) only the attempts run: no reports,
    no trigger, no cache, no span.
    """
    if flow_ctx is None or not telemetry.enabled():
        return _steps(task, run, params, upstream, flow_ctx, runtime, None)
    span = telemetry.start_span(
        f"task {task.name}",
        {
            "sluice.task.name": task.name,
            "sluice.task_run.id": run.id,
            "sluice.task_run.name": run.name,
            "sluice.task_run.key": run.task_key,
            "sluice.flow_run.id": flow_ctx.run.id,
        },
    )
    return _ending(_steps(task, run, params, upstream, flow_ctx, runtime, span), span)


def _ending(steps: Steps[TaskOutcome], span: Any) -> Steps[TaskOutcome]:
    """``steps``, ending ``span`` however they stop (normally it ends with the final state)."""
    try:
        return (yield from steps)
    finally:
        telemetry.end_span(span)


def _steps(
    task: Task[..., Any],
    run: TaskRunInfo,
    params: dict[str, Any],
    upstream: Mapping[str, State],
    flow_ctx: FlowRunContext | None,
    runtime: Runtime,
    span: Any,
) -> Steps[TaskOutcome]:
    clock = runtime.clock
    reporter = runtime.reporter if flow_ctx is not None else None
    start = flow_ctx.start if flow_ctx is not None else None
    role = start.role(run.id) if start is not None else None
    missing = ""
    if start is not None and role == "start":
        params, missing = start.inputs_for(run, params)
    ctx = TaskRunContext(task=task, run=run, parameters=params, flow_run=flow_ctx, runtime=runtime)

    def move(state: State) -> None:
        run.state = state
        if reporter is not None:
            reporter.task_run_state(run, state)
        if span is not None:
            span.add_event(state.name or state.type.value, {"sluice.state.type": state.type.value})

    def finish(state: State, value: Any = None, exc: BaseException | None = None) -> TaskOutcome:
        move(state)
        failed = state.type in _FAILED_TYPES
        if flow_ctx is not None:
            if failed and state.name != states.TRIGGER_FAILED:
                flow_ctx.failures.append((run.name, state, exc))
                log_failed(flow_ctx, run, exc, state.message)
            log_ended(flow_ctx, run, state.describe())
        if span is not None:
            telemetry.end_span(
                span,
                {"sluice.state.type": state.type.value, "sluice.state.name": state.name or ""},
                error=(state.message or state.describe()) if failed else None,
                exception=exc if failed else None,
            )
        return TaskOutcome(state, value, exc)

    def enter() -> Callable[[], None]:
        token = _task_var.set(ctx)
        if span is None:
            return lambda: _task_var.reset(token)
        detach = telemetry.attach(span)  # spans the function opens nest under the task's

        def leave() -> None:
            detach()
            _task_var.reset(token)

        return leave

    def keep(state: State, value: Any) -> State:
        if runtime.results is None or flow_ctx is None:
            return state
        return keep_result(state, value, runtime.results, f"{run.flow_run_id}.{run.id}")

    if missing:
        return finish(states.Failed(message=missing, timestamp=clock.now()))

    # With start tasks, only the calls before them reuse the earlier run's results.
    if flow_ctx is not None and flow_ctx.resume is not None and role in (None, "before"):
        earlier = flow_ctx.resume.reusable(run.task_key)
        if earlier is not None:
            try:
                value = load_result(earlier, runtime.results)
            except MissingResult as exc:
                log.warning("%s runs again: its earlier result is gone (%s)", run.name, exc)
            else:
                return finish(_resumed(earlier, clock.now()), value)

    if upstream and role != "start" and not task.trigger(upstream):  # a start task is a root
        return finish(trigger_state(task.trigger, upstream, clock.now()))

    key: str | None = None
    if task.cache_key_fn is not None and flow_ctx is not None:
        try:
            key = task.cache_key_fn(ctx, params)
            entry = runtime.cache.get(key, clock.now()) if key is not None else None
        except Exception as exc:
            msg = f"cache lookup failed: {states.describe_exception(exc)}"
            return finish(states.Failed(message=msg, timestamp=clock.now(), error=exc), exc=exc)
        if entry is not None and key is not None:
            cached = states.Cached(
                cache_key=key,
                cache_expiration=entry.expires,
                data=entry.value,
                timestamp=clock.now(),
            )
            return finish(keep(cached, entry.value), entry.value)

    args, kwargs = task.signature.call_args(params)
    policy = task.retry_policy
    what = f"task run {run.name!r}"
    retry_count = 0
    while True:
        if retry_count == 0:
            move(states.Running(timestamp=clock.now()))
        else:
            move(states.Retrying(retry_count=retry_count, timestamp=clock.now()))
        if flow_ctx is not None:
            log_started(flow_ctx, run, retry_count)
        try:
            value, error = yield Invoke(task.fn, args, kwargs, task.timeout_seconds, what, enter)
        except GeneratorExit:
            raise
        except BaseException as exc:  # thrown in by the driver: cancelled or interrupted
            if isinstance(exc, asyncio.CancelledError):
                finish(states.Cancelled(message=f"{what} was cancelled", timestamp=clock.now()))
            else:
                msg = f"{what} crashed: {states.describe_exception(exc)}"
                finish(states.Crashed(message=msg, timestamp=clock.now(), error=exc), exc=exc)
            raise
        if error is None:
            break
        if retry_count < policy.retries:
            retry_count += 1
            delay = next_delay(policy, retry_count, runtime.random())
            when = clock.now() + timedelta(seconds=delay)
            move(
                states.AwaitingRetry(
                    scheduled_time=when,
                    retry_count=retry_count,
                    message=states.describe_exception(error),
                    timestamp=clock.now(),
                    error=error,
                )
            )
            if flow_ctx is not None:
                log_retry(flow_ctx, run, error, retry_count, policy.retries, delay)
            if delay > 0:
                yield Sleep(when)
            continue
        message = states.describe_exception(error)
        if isinstance(error, RunTimeout):
            timed_out = states.TimedOut(message=message, timestamp=clock.now(), error=error)
            return finish(timed_out, exc=error)
        return finish(states.Failed(message=message, timestamp=clock.now(), error=error), exc=error)

    details = None
    if key is not None:
        now = clock.now()
        expires = now + task.cache_expiration if task.cache_expiration is not None else None
        try:
            runtime.cache.put(key, CacheEntry(value, expires))
        except Exception as exc:
            msg = f"the result could not be cached: {states.describe_exception(exc)}"
            return finish(states.Failed(message=msg, timestamp=now, error=exc), exc=exc)
        details = StateDetails(cache_key=key, cache_expiration=expires)
    completed = states.Completed(data=value, details=details, timestamp=clock.now())
    return finish(keep(completed, value), value)


def _resumed(earlier: State, now: datetime) -> State:
    """COMPLETED/Resumed carrying the earlier attempt's kept result."""
    ref = earlier.details.result_ref
    return State(
        type=StateType.COMPLETED,
        name=states.RESUMED,
        timestamp=now,
        message="result reused from an earlier attempt of the flow run",
        details=StateDetails(result_ref=ref),
        data=earlier.data,
    )
