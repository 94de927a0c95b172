"""The records Sluice stores: flow runs, deployments and their schedules.

These Structs are the values of the ``flow_runs`` and ``deployments`` KV
buckets and the bodies of replies. They tolerate unknown fields so an older
reader keeps working while a newer writer adds fields (rule: new fields get
defaults, a field's type never changes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from .states import State

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^/%\x00-\x1f]+$")]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


# --- schedules ----------------------------------------------------------------
#: Ten years: the longest interval or catch-up window a schedule may give (a
#: bound, so no value overflows the date arithmetic it feeds).
MAX_SCHEDULE_SECONDS = 10 * 366 * 24 * 3600.0


class IntervalSchedule(msgspec.Struct, frozen=True, kw_only=True, tag="interval", tag_field="type"):
    interval: Annotated[float, msgspec.Meta(gt=0, le=MAX_SCHEDULE_SECONDS)]
    """Seconds between runs."""
    anchor_date: datetime | None = None
    timezone: str = "UTC"


class CronSchedule(msgspec.Struct, frozen=True, kw_only=True, tag="cron", tag_field="type"):
    cron: str
    timezone: str = "UTC"
    day_or: bool = True


class RRuleSchedule(msgspec.Struct, frozen=True, kw_only=True, tag="rrule", tag_field="type"):
    rrule: str
    timezone: str = "UTC"


Schedule = IntervalSchedule | CronSchedule | RRuleSchedule


Overlap = Literal["allow_all", "skip", "buffer_one", "cancel_other"]


class DeploymentSchedule(msgspec.Struct, frozen=True, kw_only=True):
    schedule: Schedule
    active: bool = True
    #: Overrides merged over the deployment's default parameters.
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    catchup_window_seconds: Annotated[float, msgspec.Meta(ge=1, le=MAX_SCHEDULE_SECONDS)] | None = (
        None
    )
    """A slot the scheduler meets later than this (it was down) is skipped;
    None: the scheduler's default (``SLUICE_SCHEDULE_CATCHUP_SECONDS``)."""
    overlap: Overlap = "allow_all"
    """When a slot is due while an earlier run of the deployment's schedules is
    still going: start it anyway, skip it, hold one until the earlier ends, or
    cancel the earlier and then start it."""


class FlowRunTrigger(msgspec.Struct, frozen=True, kw_only=True, tag="flow_run", tag_field="type"):
    """Run the deployment when a run of another deployment (or flow) reaches a state.

    The scheduler follows run events; each watched run reaching one of
    ``states`` (types such as ``COMPLETED`` or names such as ``Cached``)
    creates exactly one run of the triggered deployment, with ``parameters``
    over its defaults.
    """

    deployment: str | None = None
    """``flow/deployment`` whose runs are watched."""
    flow_name: str | None = None
    """Or: any run of this flow."""
    states: list[str] = msgspec.field(default_factory=lambda: ["COMPLETED"])
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    enabled: bool = True


Trigger = FlowRunTrigger


class Infrastructure(msgspec.Struct, frozen=True, kw_only=True):
    """Where a run's process starts (a flow runner). ``universal`` (the default)
    leaves the choice to the runner: a subprocess unless it is configured
    otherwise; ``process`` and ``docker`` ask for one."""

    type: str = "universal"
    env: dict[str, str] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)


# --- deployments ----------------------------------------------------------------
GitSource = Annotated[str, msgspec.Meta(pattern=r"^git\+\S+$", max_length=2048)]


class Bundle(msgspec.Struct, frozen=True, kw_only=True):
    """A deployment's code as stored in the ``sluice_bundles`` object store."""

    digest: Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
    """``sha256:<hex>`` of the archive; also its object's name."""
    size: Annotated[int, msgspec.Meta(ge=0, le=2**40)] = 0
    """Bytes of the archive (compressed)."""
    files: Annotated[int, msgspec.Meta(ge=0, le=2**31)] = 0


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    flow_name: str
    version: str | None = None
    entrypoint: str | None = None
    """``path/to/file.py:function`` or ``package.module:function``."""
    path: str | None = None
    """Working directory the entrypoint is relative to."""
    description: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    parameter_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    enforce_parameter_schema: bool = True
    schedules: list[DeploymentSchedule] = msgspec.field(default_factory=list)
    paused: bool = False
    concurrency_limit: int | None = None
    infrastructure: Infrastructure = Infrastructure()
    queue: str = "default"
    triggers: list[Trigger] = msgspec.field(default_factory=list)
    bundle: Bundle | None = None
    """The code to run, from the object store; when set, runners run the
    entrypoint inside the unpacked bundle instead of at ``path``."""
    source: GitSource | None = None
    """``git+URL@REF``: runners run the entrypoint in that commit's tree."""
    created: datetime
    updated: datetime

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"


# --- flow runs ----------------------------------------------------------------------
class PastState(msgspec.Struct, frozen=True, kw_only=True):
    """A state a run was in before its current one, and the write that set it."""

    state: State
    """As it was stored, without the bulky parts of a finished state (its
    ``data`` and traceback): the run's current state keeps those."""
    revision: int
    """The KV revision (``flow_runs`` stream sequence) of the write that set it."""


class FlowRun(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    flow_name: str
    deployment_id: str | None = None
    deployment_name: str | None = None
    """``flow/deployment`` at the time the run was created."""
    deployment_version: str | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    tags: list[str] = msgspec.field(default_factory=list)
    idempotency_key: str | None = None
    parent_flow_run_id: str | None = None
    queue: str = "default"
    state: State
    created: datetime
    updated: datetime
    expected_start_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    run_count: int = 0
    """How many times the run entered RUNNING."""
    attempt: int = 0
    """How many times the run was claimed (entered PENDING); a claim's token."""
    runner: str | None = None
    """The runner holding the current claim, if any."""
    agentless: bool = False
    """Executed by the process that created it; no runner takes it."""
    recent_transitions: list[str] = msgspec.field(default_factory=list)
    """Ids of the last accepted transitions, so a repeated proposal is harmless."""
    created_by_request: str | None = None
    """The ``request_id`` of the create request that made the run, if it gave one."""
    traceparent: str | None = None
    """The W3C trace context of the request that created the run (when it was
    traced), so that whoever starts the run later continues the creator's trace."""
    tracestate: str | None = None
    history: list[PastState] = msgspec.field(default_factory=list)
    """The states before ``state``, oldest first: the newest ones only (the
    orchestrator's ``rules.HISTORY`` says how many), ``history_dropped`` more
    before them. Every write of a run is a transition, so a reader that saw
    only the newest write (the bucket keeps one per run) still learns every
    transition since the one it saw before, up to that bound."""
    history_dropped: int = 0
    """How many older states no longer fit in ``history``."""
