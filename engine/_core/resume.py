"""Resuming a retried flow run from the results its earlier attempts kept.

When a flow run is executed again (a runner or ``--execute`` picking up a
retry), the engine reads the run's task-run records from
``taskrun.states.<flow_run_id>`` before the body starts. A task call whose
``task_key`` (see :class:`~engine._core.reporting.TaskRunInfo`) completed in an
earlier attempt with a kept result is not run again: it ends
COMPLETED/``Resumed`` with that result (inline data, or the same
``result_ref``), and its value is loaded from the result store.

Which earlier record counts: per task key, only the records of the latest
claim attempt (``flow_run_attempt``) that reported that key; the key is
reusable when one of them is COMPLETED with a persisted result
(:func:`engine.results.is_persisted`). So a task that a later attempt ran
again and that did not finish there runs again, and records re-sent out
of order within one attempt cannot hide a completion.

``sluice flow-run retry --from-task NAME`` re-runs a task and everything
after it: it proposes the retry (SCHEDULED/AwaitingRetry, ``retry=true``)
with ``State.data = {"from_task": NAME, "rerun_task_keys": [...]}``, the
keys of the earlier records from the first call matching NAME on, in call
order (first appearance in the stream). The engine finds that request as
the newest transition of the run (in its history) that left a terminal
state for SCHEDULED, and
never reuses those keys. Tasks after NAME that never ran have no record and
run anyway.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from engine.results import is_persisted
from engine.states import RESUMED
from shared import names
from shared.messages import FlowRunStateChanged, TaskRunRecord
from shared.states import State, StateType

__all__ = [
    "RERUN_KEY",
    "RESUMED",
    "ResumePlan",
    "plan_resume",
    "read_events",
    "read_task_records",
    "rerun_keys_from",
    "rerun_requested",
    "retry_data",
]

T = TypeVar("T")

#: Where a retry request lists the task keys to run again (in ``State.data``).
RERUN_KEY = "rerun_task_keys"
_READ_TIMEOUT = 10.0


class ResumePlan(msgspec.Struct, frozen=True):
    """What a new attempt may reuse: the COMPLETED record state per task key."""

    completed: dict[str, State] = msgspec.field(default_factory=dict)
    """task key -> the state of the record to reuse."""
    rerun: frozenset[str] = frozenset()

    def reusable(self, task_key: str) -> State | None:
        """The earlier COMPLETED state for ``task_key``, or None to run the task."""
        if not self.completed or task_key in self.rerun:
            return None
        return self.completed.get(task_key)


def plan_resume(records: Iterable[TaskRunRecord], rerun: Iterable[str] = ()) -> ResumePlan:
    """The plan from a run's records in stream order (see the module docstring)."""
    latest: dict[str, int] = {}
    chosen: dict[str, State | None] = {}
    for record in records:
        key, attempt = record.task_key, record.flow_run_attempt
        if not key:
            continue
        if key not in latest or attempt > latest[key]:
            latest[key] = attempt
            chosen[key] = None
        elif attempt < latest[key]:
            continue
        if record.state.type is StateType.COMPLETED and is_persisted(record.state):
            chosen[key] = record.state
    completed = {k: s for k, s in chosen.items() if s is not None}
    return ResumePlan(completed=completed, rerun=frozenset(rerun))


def _matches(record: TaskRunRecord, name: str) -> bool:
    return name in (record.task_name, record.task_key, record.name)


def rerun_keys_from(records: Sequence[TaskRunRecord], from_task: str) -> list[str]:
    """The task keys to run again for ``--from-task``: the first call matching
    ``from_task`` (a task name, task key or task run name) and every key that
    first appeared after it.

    Raises ValueError naming the tasks of the run when nothing matches.
    """
    order: list[str] = []
    seen: set[str] = set()
    start: int | None = None
    for record in records:
        if record.task_key and record.task_key not in seen:
            seen.add(record.task_key)
            order.append(record.task_key)
        if start is None and _matches(record, from_task):
            start = order.index(record.task_key)
    if start is None:
        known = sorted({r.task_name for r in records})
        listing = ", ".join(known) if known else "none recorded"
        raise ValueError(f"no task {from_task!r} in this flow run; its tasks: {listing}")
    return order[start:]


def retry_data(from_task: str, keys: Sequence[str]) -> dict[str, Any]:
    """``State.data`` of a retry request that re-runs ``keys``."""
    return {"from_task": from_task, RERUN_KEY: list(keys)}


def rerun_requested(events: Iterable[Any]) -> list[str]:
    """The keys the newest retry request (terminal -> SCHEDULED) asked to re-run."""
    keys: list[str] = []
    for event in events:
        if not isinstance(event, FlowRunStateChanged) or event.from_state is None:
            continue
        state = event.flow_run.state
        if event.from_state.is_terminal and state.type is StateType.SCHEDULED:
            data = state.data
            found = data.get(RERUN_KEY) if isinstance(data, dict) else None
            keys = [k for k in found if isinstance(k, str)] if isinstance(found, list) else []
    return keys


# --- reading the streams (needs a connection) -------------------------------------------
async def _read_subject(nc: Any, stream: str, subject: str, type_: type[T]) -> list[T]:
    """Every message stored on ``subject`` when the call began, decoded; others skipped."""
    import nats.errors
    import nats.js.errors
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from shared.codec import decoder

    js = nc.jetstream()
    try:
        last = (await js.get_last_msg(stream, subject)).seq or 0
    except nats.js.errors.NotFoundError:
        return []
    decode = decoder(type_).decode
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    out: list[T] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=_READ_TIMEOUT)
            with contextlib.suppress(msgspec.DecodeError):  # not a record of ours: skip it
                out.append(decode(msg.data))
            if msg.metadata.sequence.stream >= last:
                return out
    except nats.errors.TimeoutError:
        from shared.errors import StackUnavailable

        raise StackUnavailable(f"reading {subject!r} from {stream} timed out") from None
    finally:
        await sub.unsubscribe()


async def read_task_records(nc: Any, flow_run_id: str) -> list[TaskRunRecord]:
    """The task-run records of a flow run, oldest first. Raises StackUnavailable."""
    subject = names.taskruns_subject(flow_run_id)
    return await _read_subject(nc, names.TASKRUNS_STREAM, subject, TaskRunRecord)


async def read_events(nc: Any, flow_run_id: str) -> list[Any]:
    """The run's transitions that its record still holds (``shared.runlog``), oldest
    first; [] for an unknown run. Raises StackUnavailable."""
    import nats.errors
    import nats.js.errors

    from shared import runlog

    try:
        msg = await nc.jetstream().get_last_msg(runlog.STREAM, runlog.subject(flow_run_id))
    except nats.js.errors.NotFoundError:
        return []
    except (nats.errors.Error, TimeoutError):
        from shared.errors import StackUnavailable

        raise StackUnavailable(f"reading flow run {flow_run_id} timed out") from None
    occurred = msg.time or datetime.now(UTC)  # the server always gives it
    event = runlog.decode_entry(flow_run_id, msg.data, msg.headers, msg.seq or 0, occurred)
    return runlog.transitions(event)


async def load_plan(nc: Any, flow_run_id: str) -> ResumePlan | None:
    """The resume plan of a run about to execute again; None when nothing is reusable."""
    records = await read_task_records(nc, flow_run_id)
    if not records:
        return None
    rerun = rerun_requested(await read_events(nc, flow_run_id))
    plan = plan_resume(records, rerun)
    return plan if plan.completed else None
