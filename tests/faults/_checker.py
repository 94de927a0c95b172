"""The offline history checker: after a fault test, are the invariants intact?

Input: the clients' :class:`~tests.faults._history.History`, and a
:class:`Snapshot` of what the stack stored — the ``flow_runs`` KV entries,
the run events they stand for (each entry is its run's newest write, whose
history holds the transitions before it; :func:`replayed`), the deployments
and their slot leases.
:func:`check` is pure (no NATS, no clock); :func:`collect` reads a snapshot.

Invariants, one function each:

* no acknowledged create lost, and every retry of one key got the same run;
* at most one run per idempotency key, and per scheduler slot;
* every state path legal: each event's transition is one the orchestration
  rules (``services.orchestrator.rules``, pure) accept from the run as the
  previous event left it, with the claim attempt counted right; and the
  newest write of every run has its event;
* at no instant more Running runs of a deployment than its concurrency limit
  (a sweep over the Running intervals, from the orchestrator's timestamps);
* no slot leaked: every held slot lease belongs to a run that is still claimed.

No process left behind is a property of the machine, not of NATS: see
:func:`leftover_processes`.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.orchestrator import rules
from services.scheduler._slots import parse_key
from shared import names, runlog
from shared.codec import decode
from shared.messages import (
    Decision,
    Event,
    FlowRunCreated,
    FlowRunDeleted,
    FlowRunStateChanged,
    ProposedState,
    ProposeState,
    SlotLease,
)
from shared.models import Deployment, FlowRun
from shared.slots import STREAM as SLOTS_STREAM
from shared.slots import lease_from
from shared.states import TERMINAL_TYPES, StateType

from ._history import History


@dataclass
class Snapshot:
    runs: dict[str, FlowRun] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)
    events: dict[str, list[Event]] = field(default_factory=dict)
    """Per run, ordered by revision, each revision once."""
    deployments: dict[str, Deployment] = field(default_factory=dict)
    slots: dict[str, list[SlotLease]] = field(default_factory=dict)
    """Per deployment id, the live leases."""


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    max_running: dict[str, int] = field(default_factory=dict)
    """Per deployment id: the most Running runs at one instant."""
    runs: int = 0
    events: int = 0
    gaps: int = 0
    """Transitions whose event is missing (a writer died before announcing it)."""
    max_bodies: dict[str, int] = field(default_factory=dict)
    """Per deployment id: the most bodies executing at one instant (journal)."""
    bodies: int = 0

    def __bool__(self) -> bool:
        return not self.violations


# --- the invariants ---------------------------------------------------------------
def acknowledged_creates(history: History, snap: Snapshot) -> list[str]:
    out = []
    by_key: dict[str, set[str]] = defaultdict(set)
    for op in history.of("create", "ok"):
        if op.run_id is None or op.run_id not in snap.runs:
            out.append(f"acknowledged create {op.key!r} -> {op.run_id} is lost")
        elif op.run_id not in snap.events:
            out.append(f"acknowledged create {op.key!r} -> {op.run_id} has no event")
        if op.key is not None and op.run_id is not None:
            by_key[op.key].add(op.run_id)
    out += [
        f"key {k!r} acknowledged as several runs {sorted(v)}"
        for k, v in by_key.items()
        if len(v) > 1
    ]
    return out


def unique_keys(snap: Snapshot) -> list[str]:
    keys: dict[tuple[str, str], list[str]] = defaultdict(list)
    slots: dict[tuple[str, str, datetime], list[str]] = defaultdict(list)
    for run in snap.runs.values():
        if run.idempotency_key is None:
            continue
        keys[(run.deployment_id or f"flow:{run.flow_name}", run.idempotency_key)].append(run.id)
        slot = parse_key(run.idempotency_key)
        if slot is not None:
            slots[(slot.deployment_id, slot.digest, slot.slot)].append(run.id)
    out = [f"idempotency key {k[1]!r} has runs {v}" for k, v in keys.items() if len(v) > 1]
    out += [
        f"schedule slot {k[2].isoformat()} has runs {v}" for k, v in slots.items() if len(v) > 1
    ]
    return out


def _proposal_for(before: FlowRun, after: FlowRun, event: Event) -> ProposeState:
    state = after.state
    return ProposeState(
        id=after.id,
        state=ProposedState(type=state.type, name=state.name, message=state.message),
        transition_id=None if isinstance(event, FlowRunCreated) else event.transition_id,
        runner=after.runner if state.type is StateType.PENDING else None,
        retry=before.state.type in TERMINAL_TYPES and state.type is StateType.SCHEDULED,
        # Events do not carry the proposal's claim attempt; a change to a claimed
        # run is legal when its holder, who names the attempt, could have made it.
        attempt=before.attempt if before.runner is not None else None,
    )


def legal_paths(snap: Snapshot, report: Report) -> list[str]:
    out = []
    for run_id, events in snap.events.items():
        first = events[0].flow_run
        if isinstance(events[0], FlowRunCreated) and (
            first.state.type is not StateType.SCHEDULED or first.attempt != 0
        ):
            out.append(f"run {run_id} was created as {first.state.type} attempt {first.attempt}")
        for prev_event, event in itertools.pairwise(events):
            before, after = prev_event.flow_run, event.flow_run
            from_state = getattr(event, "from_state", None)
            if from_state is None or from_state != before.state:
                report.gaps += 1  # an event in between is missing: judge from what it says
                if from_state is None:
                    continue
                before = msgspec.structs.replace(before, state=from_state)
            ctx = rules.Context(
                run=before, proposal=_proposal_for(before, after, event), now=after.state.timestamp
            )
            outcome = rules.decide(ctx)
            path = f"{before.state.describe()} -> {after.state.describe()}"
            if outcome.status is not Decision.ACCEPT or outcome.replay:
                out.append(
                    f"run {run_id}: illegal {path} at revision {event.revision}: "
                    f"{outcome.status} ({outcome.reason})"
                )
            # A claim raises the attempt, and so does giving one up (a release).
            claims = after.state.type is StateType.PENDING or (
                before.state.type is StateType.PENDING
                and after.state.type is StateType.SCHEDULED
                and after.runner is None
            )
            if from_state == prev_event.flow_run.state and after.attempt != before.attempt + claims:
                out.append(
                    f"run {run_id}: {path} moved the attempt {before.attempt}->{after.attempt}"
                )
        last = events[-1]
        if run_id in snap.runs and last.revision != snap.revisions[run_id]:
            out.append(
                f"run {run_id}: newest write (revision {snap.revisions[run_id]}) has no event "
                f"(last event at revision {last.revision})"
            )
    for run_id in snap.runs.keys() - snap.events.keys():
        out.append(f"run {run_id} is stored but has no event at all")
    return out


def running_intervals(events: list[Event]) -> list[tuple[datetime, datetime | None]]:
    spans: list[tuple[datetime, datetime | None]] = []
    start: datetime | None = None
    for event in events:
        state = event.flow_run.state
        if state.type is StateType.RUNNING and start is None:
            start = state.timestamp
        elif state.type is not StateType.RUNNING and start is not None:
            spans.append((start, state.timestamp))
            start = None
    if start is not None:
        spans.append((start, None))
    return spans


Span = tuple[datetime, datetime | None, str]
"""A run's time in Running: from, until (None: still), and the run's id."""


def peak(spans: Iterable[Span]) -> tuple[int, list[str]]:
    """The most spans open at one instant (an end at t closes before a start at
    t), and the runs open then: the message names them, so a breach found in
    CI can be read without reproducing it."""
    points: list[tuple[datetime, int, str]] = []
    for start, end, run_id in spans:
        points.append((start, 1, run_id))
        if end is not None:
            points.append((end, -1, run_id))
    best: list[str] = []
    open_now: list[str] = []
    for _, step, run_id in sorted(points, key=lambda p: (p[0], p[1])):
        if step > 0:
            open_now.append(run_id)
        else:
            open_now.remove(run_id)
        if len(open_now) > len(best):
            best = list(open_now)
    return len(best), best


def max_overlap(spans: Iterable[tuple[datetime, datetime | None]]) -> int:
    """The most intervals open at one instant (an end at t closes before a start at t)."""
    return peak((start, end, str(n)) for n, (start, end) in enumerate(spans))[0]


def concurrency(snap: Snapshot, report: Report) -> list[str]:
    per_deployment: dict[str, list[Span]] = defaultdict(list)
    for run_id, events in snap.events.items():
        dep = events[-1].flow_run.deployment_id
        if dep is not None:
            per_deployment[dep] += [(a, b, run_id) for a, b in running_intervals(events)]
    out = []
    for dep, spans in per_deployment.items():
        seen, runs = peak(spans)
        report.max_running[dep] = seen
        deployment = snap.deployments.get(dep)
        limit = deployment.concurrency_limit if deployment else None
        if limit is not None and seen > limit:
            paths = "; ".join(f"{r}: {_path(snap.events[r])}" for r in runs)
            out.append(f"deployment {dep}: {seen} runs Running at once, limit {limit} ({paths})")
    return out


def _path(events: list[Event]) -> str:
    """A run's states as the checker read them: type, attempt, claimant, time."""
    return " -> ".join(
        f"{s.type.value} a{e.flow_run.attempt} {e.flow_run.runner or '-'} {s.timestamp.time()}"
        for e in events
        for s in [e.flow_run.state]
    )


def leaked_slots(snap: Snapshot) -> list[str]:
    out = []
    for dep, leases in snap.slots.items():
        for lease in leases:
            run = snap.runs.get(lease.flow_run_id)
            if run is None or run.state.type not in rules.CLAIMED_TYPES:
                state = run.state.describe() if run else "no run"
                out.append(f"deployment {dep}: slot held by run {lease.flow_run_id} ({state})")
    return out


def check(history: History, snap: Snapshot, *, running_states_limit: bool = True) -> Report:
    """``running_states_limit=False``: the limit is judged on a body journal instead
    (``tests.faults._bodies``). After a fenced holder's lease lapsed, its run may
    still *say* Running until the watcher marks it while another run already
    holds the slot; only bodies tell whether the limit held."""
    report = Report(runs=len(snap.runs), events=sum(map(len, snap.events.values())))
    report.violations += acknowledged_creates(history, snap)
    report.violations += unique_keys(snap)
    report.violations += legal_paths(snap, report)
    over = concurrency(snap, report)
    report.violations += over if running_states_limit else []
    report.violations += leaked_slots(snap)
    return report


# --- reading a snapshot -------------------------------------------------------------
def replayed(event: FlowRunCreated | FlowRunStateChanged) -> list[Event]:
    """The events of every transition of a run that its newest write still holds.

    The stream keeps a run's newest write; its history keeps the states before
    (``shared.runlog.transitions``), not the whole run as each left it. Each
    earlier value is rebuilt from the one before with the orchestrator's own
    ``rules.apply`` (so claims raise the attempt, transition ids are
    remembered), and the newest is the stored run itself: a path whose
    counting went wrong anywhere shows as a wrong attempt at its last step.
    """
    derived = runlog.transitions(event)
    stored = event.flow_run
    out: list[Event] = []
    before: FlowRun | None = None
    for each in derived[:-1]:
        assert not isinstance(each, FlowRunDeleted)
        state = each.flow_run.state
        if before is None:
            # The creation if the history reaches back to it, else a gap: from
            # there on it is judged on what the states say.
            before = msgspec.structs.replace(
                stored,
                state=state,
                updated=state.timestamp,
                expected_start_time=state.details.scheduled_time or stored.created,
                attempt=0,
                runner=None,
                run_count=0,
                start_time=None,
                end_time=None,
                recent_transitions=[],
                history=[],
                history_dropped=0,
            )
        else:
            release = before.state.type is StateType.PENDING and state.type is StateType.SCHEDULED
            after = msgspec.structs.replace(before, state=state, runner=state.details.runner)
            proposal = msgspec.structs.replace(
                _proposal_for(before, after, each), release=release, agentless=stored.agentless
            )
            ctx = rules.Context(run=before, proposal=proposal, now=state.timestamp)
            before = rules.apply(ctx, state)
        out.append(msgspec.structs.replace(each, flow_run=before))
    out.append(event)
    return out


async def _read_all(nc: NATS, stream: str, subject: str, last_per_subject: bool) -> list[object]:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    policy = DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.ALL
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, config=ConsumerConfig(deliver_policy=policy)
    )
    out: list[object] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=5.0)
            except nats.errors.TimeoutError:
                break  # nothing (more) on this subject
            out.append(msg)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def collect(nc: NATS, deployment_ids: Iterable[str]) -> Snapshot:
    """Everything the stack stored about the runs of these deployments."""
    wanted = set(deployment_ids)
    snap = Snapshot()
    js = nc.jetstream()
    deployments = await js.key_value(names.DEPLOYMENTS_BUCKET)
    for dep_id in wanted:
        entry = await deployments.get(f"d.{dep_id}", validate_keys=False)
        if entry.value:
            snap.deployments[dep_id] = decode(entry.value, Deployment)
    for msg in await _read_all(nc, runlog.STREAM, runlog.SUBJECTS, True):
        event = runlog.event_of(msg)
        if isinstance(event, FlowRunDeleted) or event.flow_run.deployment_id not in wanted:
            continue
        snap.runs[event.flow_run.id] = event.flow_run
        snap.revisions[event.flow_run.id] = event.revision
        snap.events[event.flow_run.id] = replayed(event)
    for dep_id, dep in snap.deployments.items():
        leases = []
        for n in range(dep.concurrency_limit or 0):
            try:
                msg = await js.get_last_msg(SLOTS_STREAM, f"$KV.{names.SLOTS_BUCKET}.{dep_id}.{n}")
            except nats.js.errors.NotFoundError:
                continue  # a slot never taken
            if (lease := lease_from(msg)) is not None:
                leases.append(lease)
        snap.slots[dep_id] = leases
    return snap


# --- processes ------------------------------------------------------------------------
def leftover_processes(run_ids: Iterable[str]) -> dict[int, str]:
    """Live processes (pid -> run id) started for one of these runs, found by environment."""
    wanted = {f"SLUICE_FLOW_RUN_ID={r}".encode() for r in run_ids}
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    continue  # a zombie waits for its parent to reap it: it runs nothing
        except OSError:
            continue
        for item in env:
            if item in wanted:
                found[int(entry)] = item.split(b"=", 1)[1].decode()
    return found
