"""What travels on streams between our own services: dispatch items, task-run
records and log records; and the run events read from the ``flow_runs`` stream.

They tolerate unknown fields (no ``forbid_unknown_fields``), so a service of
a newer version may add fields during a rolling upgrade. Run events are not
stored anywhere themselves: each is what one message of the ``flow_runs``
bucket's stream means, decoded by :mod:`shared.runlog` (the one place that
does). :mod:`shared.messages` re-exports every name here, so the wire
contract is still imported from one place.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from .models import FlowRun
from .states import State

__all__ = [
    "Dispatch",
    "Event",
    "FlowRunCreated",
    "FlowRunDeleted",
    "FlowRunStateChanged",
    "LogRecord",
    "TaskRunRecord",
]


# --- events: what a write of the ``flow_runs`` bucket means (see shared.runlog) -----
class FlowRunCreated(
    msgspec.Struct, frozen=True, kw_only=True, tag="flowrun.created", tag_field="kind"
):
    flow_run: FlowRun
    revision: int
    """The run's KV revision after this write; orders events of one run."""
    occurred: datetime


class FlowRunStateChanged(
    msgspec.Struct, frozen=True, kw_only=True, tag="flowrun.state.changed", tag_field="kind"
):
    flow_run: FlowRun
    revision: int
    occurred: datetime
    from_state: State | None = None
    """The state before, from the run's history (without its bulky parts); None
    when the history does not reach back to it."""
    transition_id: str | None = None


class FlowRunDeleted(
    msgspec.Struct, frozen=True, kw_only=True, tag="flowrun.deleted", tag_field="kind"
):
    """The run was removed from ``flow_runs``."""

    flow_run_id: str
    revision: int
    """The KV revision of the delete marker: after every other write of the run."""
    occurred: datetime
    flow_run: FlowRun | None = None
    """The run as it was; None for a marker that does not carry it (a purge, or
    a delete made with a tool rather than by the orchestrator)."""
    reason: str | None = None


Event = FlowRunCreated | FlowRunStateChanged | FlowRunDeleted


# --- work items and logs ---------------------------------------------------------
class Dispatch(msgspec.Struct, frozen=True, kw_only=True):
    """A run that is due, offered to the runners of its queue."""

    flow_run_id: str
    deployment_id: str | None
    queue: str
    attempt: int
    """The run's attempt counter when dispatched; a runner claims attempt + 1."""
    scheduled_time: datetime


class TaskRunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One state of one task run, as the engine reports it on ``taskrun.states.<flow_run_id>``.

    ``task_key`` identifies the call within its flow run across attempts
    (task name and call order, plus the map index), which is how a retried
    flow run finds the results of tasks that already completed.
    """

    flow_run_id: str
    task_run_id: str
    task_key: str
    task_name: str
    name: str
    state: State
    flow_run_attempt: int = 0
    map_index: int | None = None
    upstream_ids: list[str] = msgspec.field(default_factory=list)
    tags: list[str] = msgspec.field(default_factory=list)


class LogRecord(msgspec.Struct, frozen=True, kw_only=True):
    flow_run_id: str
    timestamp: datetime
    level: int
    message: str
    logger: str = "sluice"
    task_run_id: str | None = None
    #: The name of the task run that logged it (``extract-2``), for display.
    task_run_name: str | None = None
