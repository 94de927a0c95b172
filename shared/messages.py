"""Requests, replies, events and work items exchanged on NATS subjects.

(Events, work items and records are defined in :mod:`shared.records`.)

Requests come from any client and reject unknown fields, so a typo such as
``paramaters`` is an error the sender sees. Events and work items pass between
our own services and tolerate unknown fields, so a rolling upgrade works.
Tags of the event union are stable dotted names and are never reused.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import msgspec

from .models import (
    Bundle,
    Deployment,
    DeploymentSchedule,
    FlowRun,
    GitSource,
    Infrastructure,
    Name,
    Tag,
    Trigger,
)

# Events, work items and logs travel on streams, between our own services: they
# live in shared/records.py and are re-exported here, the contract's one module.
from .records import Dispatch as Dispatch
from .records import Event as Event
from .records import FlowRunCreated as FlowRunCreated
from .records import FlowRunDeleted as FlowRunDeleted
from .records import FlowRunStateChanged as FlowRunStateChanged
from .records import LogRecord as LogRecord
from .records import TaskRunRecord as TaskRunRecord
from .states import State, StateDetails, StateType

Uuid = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F-]{32,36}$")]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
# Every integer a request carries has a range (docs/contract.md lists them):
# out of range is ``malformed`` naming the field, never an overflow deeper in.
PageLimit = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
Attempt = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
"""A claim counter: far beyond any real run's count of claims, well inside int64."""
ConcurrencyLimit = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
RunnerLimit = Annotated[int, msgspec.Meta(ge=0, le=100_000)]


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every client request: unknown fields are refused."""


# --- flow runs -------------------------------------------------------------------
class CreateFlowRun(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    deployment: str | None = None
    """``flow/deployment``; resolves to the newest version of that deployment."""
    deployment_id: Uuid | None = None
    flow_name: Name | None = None
    """For a run with no deployment (a flow called directly from Python)."""
    parameters: dict[str, Any] | None = None
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    scheduled_start_time: datetime | None = None
    idempotency_key: Key | None = None
    tags: list[Tag] = msgspec.field(default_factory=list)
    parent_flow_run_id: Uuid | None = None
    agentless: bool = False
    """Executed by the creating process itself (``sluice run --execute``):
    never offered to runners."""
    request_id: Key | None = None
    """The caller's id for this request. A run it creates records it as
    ``created_by_request``; a run an idempotency key returned carries another
    (or none), so the caller can tell the two apart."""


class ProposedState(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: StateType
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    message: str | None = None
    details: StateDetails = StateDetails()
    data: Any = None


class ProposeState(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Uuid
    state: ProposedState
    transition_id: Key | None = None
    """Makes a repeated proposal harmless: the same id is accepted once."""
    attempt: Attempt | None = None
    """The claim the proposer holds; a stale owner's report is refused."""
    runner: Name | None = None
    """Who claims the run, when proposing PENDING."""
    retry: bool = False
    """Leave a terminal state: only with SCHEDULED (AwaitingRetry)."""
    release: bool = False
    """With SCHEDULED: give up the claim, so the run is offered to runners again
    (a dead runner's Pending run). Without it, an owner's SCHEDULED (an
    in-process retry waiting for its delay) keeps the claim. Pending only; it
    raises the attempt (the released holder is stale)."""
    agentless: bool = False
    """With ``retry``: the proposer executes the retry itself (``--execute``);
    the run is marked agentless, so no runner takes it."""
    expected: StateType | None = None
    """The state type the proposer read the run in: REJECT if it moved on since."""


class Decision(enum.StrEnum):
    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    WAIT = "WAIT"
    ABORT = "ABORT"


class ProposeReply(msgspec.Struct, frozen=True, kw_only=True):
    status: Decision
    state: State
    """The accepted state on ACCEPT, otherwise the run's current state."""
    reason: str | None = None
    delay_seconds: float | None = None
    """On WAIT: propose again after this many seconds."""
    attempt: int = 0
    revision: int = 0
    flow_run: FlowRun | None = None
    """On ACCEPT: the run as this transition left it (saves the proposer a read)."""
    deployment: Deployment | None = None
    """On an accepted claim (PENDING with a runner): the run's deployment as the
    orchestrator read it to take the concurrency slot (saves the runner a read)."""
    lease_seconds: float | None = None
    """On a claim that took a concurrency slot: the slot lease (from the send)."""


class FlowRunRef(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Uuid


class CancelFlowRun(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Uuid
    reason: str | None = None
    cascade: bool = True
    """Also cancel the run's unfinished child runs (subflows and runs it started)."""


class DeleteFlowRun(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``flowrun.delete``: remove a run that has not started or has finished.

    A Scheduled run not yet claimed, or a run in a terminal state, may be
    deleted; any other is refused (cancel it first). ``scheduled_only`` also
    refuses a finished run: the scheduler removes only upcoming runs, so a
    run that started meanwhile is left alone. Deleting frees the run's
    idempotency key, so a create with that key makes the run again.
    """

    id: Uuid
    reason: str | None = None
    scheduled_only: bool = False


class ListFlowRuns(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    states: list[str] = msgspec.field(default_factory=list)
    """State types (``FAILED``) or names (``Late``); a run matching any is kept."""
    deployment: str | None = None
    """``flow/deployment`` or a deployment id."""
    flow_name: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    """A run must carry every one of these tags."""
    parent_flow_run_id: str | None = None
    runner: str | None = None
    """Runs claimed by this runner."""
    since: datetime | None = None
    """Expected start time at or after this instant."""
    until: datetime | None = None
    name: str | None = None
    """Runs with exactly this name."""
    id_prefix: Annotated[str, msgspec.Meta(max_length=36)] | None = None
    """Runs whose id starts with this (lower-case hex and hyphens)."""
    limit: PageLimit = 50
    offset: Offset = 0
    count: bool = False
    """Also count every match (``FlowRunPage.total``); costs one more query."""


class FlowRunPage(msgspec.Struct, frozen=True, kw_only=True):
    flow_runs: list[FlowRun]
    offset: int
    next_offset: int | None = None
    total: int | None = None
    """Every run matching the filters, when the request asked for ``count``."""


# --- deployments -----------------------------------------------------------------
class RegisterDeployment(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    flow_name: Name
    version: str | None = None
    entrypoint: str | None = None
    path: str | None = None
    description: str | None = None
    tags: list[Tag] = msgspec.field(default_factory=list)
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    parameter_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    enforce_parameter_schema: bool = True
    schedules: list[DeploymentSchedule] = msgspec.field(default_factory=list)
    paused: bool = False
    concurrency_limit: ConcurrencyLimit | None = None
    infrastructure: Infrastructure = Infrastructure()
    queue: Name = "default"
    triggers: list[Trigger] = msgspec.field(default_factory=list)
    bundle: Bundle | None = None
    source: GitSource | None = None


class DeploymentRef(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A deployment by id, by ``flow/deployment``, or by flow name alone when
    that flow has exactly one deployment."""

    id: Uuid | None = None
    name: str | None = None


class ListDeployments(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    flow_name: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    limit: PageLimit = 100
    offset: Offset = 0
    all_versions: bool = False
    """Every stored version of each name, oldest first, not only the newest."""


class DeploymentPage(msgspec.Struct, frozen=True, kw_only=True):
    deployments: list[Deployment]
    offset: int
    next_offset: int | None = None


class Deleted(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    deleted: bool = True


class BackfillDeployment(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``deployment.backfill`` (served by the scheduler): create the runs of every
    active schedule of a deployment for slots from ``start`` to ``end``, both
    included. Slots that already have a run keep it."""

    id: Uuid | None = None
    name: str | None = None
    start: datetime
    end: datetime | None = None
    """Default: now. Later slots are the scheduler's own upcoming runs."""


class BackfilledRun(msgspec.Struct, frozen=True, kw_only=True):
    slot: datetime
    flow_run_id: str
    state: str
    """The run's state name when the reply was made (an existing run keeps its own)."""


class BackfillReply(msgspec.Struct, frozen=True, kw_only=True):
    deployment_id: str
    deployment: str
    start: datetime
    end: datetime
    """The range used: ``end`` is at most the time of the request."""
    runs: list[BackfilledRun] = msgspec.field(default_factory=list)


# --- runners ------------------------------------------------------------------------
class HeldRun(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: Uuid
    attempt: Attempt


class Heartbeat(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A runner saying it is alive and which runs it holds; renews their slot leases."""

    runner: Name
    interval: Annotated[float, msgspec.Meta(gt=0, le=3600)]
    limit: RunnerLimit = 0
    runs: list[HeldRun] = msgspec.field(default_factory=list)
    queues: list[Name] = msgspec.field(default_factory=list)
    """The work queues the runner pulls from (all of each queue's deployments)."""
    deployments: list[str] = msgspec.field(default_factory=list)
    """``flow/deployment`` names the runner serves one by one."""


DispatchFilter = Annotated[
    str,
    msgspec.Meta(max_length=300, pattern=r"^flowrun\.dispatch\.(\*|[^.*> \t]+)\.(>|[^.*> \t]+)$"),
]


class DispatchConsumer(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``runner.consumer``: the dispatch consumer for what a runner serves
    (``flowrun.dispatch.<queue>.>`` or ``flowrun.dispatch.*.<deployment_id>``)."""

    filters: Annotated[list[DispatchFilter], msgspec.Meta(min_length=1, max_length=1000)]


class DispatchConsumerReply(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    durable: str
    """Pull from this durable consumer of ``stream``."""


class HeartbeatReply(msgspec.Struct, frozen=True, kw_only=True):
    lease_seconds: float
    """How long the heartbeat (and each slot it renewed) lasts, from its send."""
    lost: list[str] = msgspec.field(default_factory=list)
    """Runs it named that it holds no longer (reclaimed, released, Crashed or
    Cancelled): their processes must die at once."""


class KillRun(Request, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ask the runner holding a run to stop its process tree."""

    id: Uuid
    attempt: Attempt
    grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0


class KillReply(msgspec.Struct, frozen=True, kw_only=True):
    found: bool
    """False: this runner has no process for that run (and attempt)."""
    exit_code: int | None = None


class RunnerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A ``runner_heartbeats`` entry."""

    runner: str
    at: datetime
    interval: float
    limit: int = 0
    runs: list[HeldRun] = msgspec.field(default_factory=list)
    queues: list[str] = msgspec.field(default_factory=list)
    deployments: list[str] = msgspec.field(default_factory=list)


class SlotLease(msgspec.Struct, frozen=True, kw_only=True):
    """A ``concurrency_slots`` entry: which run holds the slot."""

    deployment_id: str
    flow_run_id: str
    runner: str | None = None
    attempt: int = 0
