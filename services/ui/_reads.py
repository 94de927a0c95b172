"""What the pages read beside the client's calls: runners, slots, timelines, task runs.

Every read here is of a public bucket or stream named in ``shared.names``
(``runner_heartbeats``, ``concurrency_slots``, ``flow_runs`` with the
state history each run keeps, ``TASKRUN_STATES``) or a request the
orchestrator serves; nothing reads a service's private storage. Reads never
write.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
import nats.errors
import nats.js.errors

from engine._core.resume import read_events, read_task_records
from engine.client import Client
from shared import names
from shared.codec import decoder
from shared.messages import FlowRunStateChanged, RunnerStatus, SlotLease
from shared.models import Deployment, FlowRun
from shared.slots import STREAM as SLOTS_STREAM
from shared.slots import lease_from, slot_subject
from shared.states import State

from ._gantt import TaskRunView, fold_task_runs

__all__ = [
    "RunnerView",
    "TaskRunView",
    "TimelineEntry",
    "next_runs",
    "read_runners",
    "slots_in_use",
    "task_runs",
    "timeline",
]

_runner_status = decoder(RunnerStatus).decode


# --- runners ---------------------------------------------------------------------
@dataclass(frozen=True)
class RunnerView:
    status: RunnerStatus
    alive: bool
    """Heartbeat renewed within two intervals (the stack's own rule for "lost")."""

    gone: bool = False
    """Its heartbeat entry has expired: the stack has given up on it."""

    @property
    def used(self) -> int:
        return len(self.status.runs)


#: How long a runner whose heartbeat expired stays on the runners page, as lost.
LOST_FOR = timedelta(minutes=15)


def with_lost(
    views: list[RunnerView], seen: dict[str, RunnerStatus], now: datetime
) -> list[RunnerView]:
    """``views`` plus the runners seen before whose entries expired less than ``LOST_FOR`` ago.

    The stack forgets a lost runner when its heartbeat entry expires, so
    the UI remembers what it saw (``seen`` is updated in place): a runner
    that vanished is shown as lost for a while rather than disappearing.
    Only runners this UI process saw alive are remembered.
    """
    present = {v.status.runner for v in views}
    for view in views:
        seen[view.status.runner] = view.status
    out = list(views)
    for name, status in list(seen.items()):
        if name in present:
            continue
        if status.at + LOST_FOR < now:
            del seen[name]
            continue
        out.append(RunnerView(status=status, alive=False, gone=True))
    return sorted(out, key=lambda v: v.status.runner)


async def read_runners(client: Client, now: datetime) -> list[RunnerView]:
    """Every runner with a heartbeat entry, by name. Expired entries are gone already."""
    try:
        kv = await client.nc.jetstream().key_value(names.HEARTBEATS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        return []
    watcher = await kv.watchall()
    found: dict[str, RunnerStatus] = {}
    try:
        while True:
            # The first None marks the values present when the watch began.
            entry = await watcher.updates(timeout=2.0)
            if entry is None:
                break
            if entry.operation is not None or not entry.value:
                found.pop(entry.key, None)
                continue
            with contextlib.suppress(msgspec.DecodeError):
                found[entry.key] = _runner_status(entry.value)
    except nats.errors.TimeoutError:
        pass
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()
    return [
        RunnerView(status=s, alive=s.at + timedelta(seconds=2 * s.interval) >= now)
        for _, s in sorted(found.items())
    ]


# --- deployments -------------------------------------------------------------------
async def slots_in_use(client: Client, deployment: Deployment) -> list[SlotLease]:
    """The live concurrency-slot leases of a deployment (empty without a limit)."""
    if not deployment.concurrency_limit:
        return []
    js = client.nc.jetstream()
    held = []
    for n in range(deployment.concurrency_limit):
        try:
            msg = await js.get_last_msg(SLOTS_STREAM, slot_subject(deployment.id, n))
        except nats.js.errors.NotFoundError:
            continue
        if (lease := lease_from(msg)) is not None:
            held.append(lease)
    return held


async def next_runs(
    client: Client, deployment: Deployment, now: datetime, count: int = 3
) -> list[FlowRun]:
    """The deployment's next ``count`` scheduled runs (the scheduler creates them ahead)."""
    page = await client.list_flow_runs(
        deployment=deployment.full_name, states=["SCHEDULED"], since=now, limit=1000
    )
    upcoming = sorted(page.flow_runs, key=lambda r: r.expected_start_time)
    return upcoming[:count]


# --- one run -------------------------------------------------------------------------
@dataclass(frozen=True)
class TimelineEntry:
    state: State
    from_state: State | None


async def timeline(client: Client, run: FlowRun) -> list[TimelineEntry]:
    """The run's accepted transitions that it records, oldest first (``shared.runlog``)."""
    seen: set[int] = set()
    out = []
    for event in await read_events(client.nc, run.id):
        if event.revision in seen:
            continue
        seen.add(event.revision)
        from_state = event.from_state if isinstance(event, FlowRunStateChanged) else None
        out.append(TimelineEntry(state=event.flow_run.state, from_state=from_state))
    if not out or out[-1].state.timestamp < run.state.timestamp:
        # The run moved on after the write read above: show where it is now too.
        out.append(TimelineEntry(state=run.state, from_state=None))
    return out


async def task_runs(client: Client, run: FlowRun) -> list[TaskRunView]:
    """Each task run with its states (so its own attempts), in the order the tasks were called."""
    return fold_task_runs(await read_task_records(client.nc, run.id))
