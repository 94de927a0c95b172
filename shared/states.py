"""Flow-run state types and the State record.

This module owns what a state *is*. Which transitions are allowed is decided
by the orchestrator's rules (``services.orchestrator.rules``), never here.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import msgspec


class StateType(enum.StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLING = "CANCELLING"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"


#: A run in one of these states is finished: nothing leaves it except an
#: explicit retry (a proposal of SCHEDULED with ``retry=True``).
TERMINAL_TYPES: frozenset[StateType] = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
)

#: States in which a run holds infrastructure (a process that must be watched).
ACTIVE_TYPES: frozenset[StateType] = frozenset(
    {StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED}
)

DEFAULT_NAMES: dict[StateType, str] = {
    StateType.SCHEDULED: "Scheduled",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CRASHED: "Crashed",
    StateType.CANCELLING: "Cancelling",
    StateType.CANCELLED: "Cancelled",
    StateType.PAUSED: "Paused",
}

# Well-known names of non-default states (Prefect's vocabulary).
LATE = "Late"
AWAITING_RETRY = "AwaitingRetry"
RETRYING = "Retrying"
CACHED = "Cached"

StateName = msgspec.Meta(min_length=1, max_length=64)

#: Longest traceback a state keeps, in characters. Longer ones lose their
#: outermost frames: the frames nearest the raise are the ones that explain it.
MAX_TRACEBACK_CHARS = 16 * 1024


class StateDetails(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Facts that some states carry; every field is optional."""

    scheduled_time: datetime | None = None
    retry_count: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    cache_key: str | None = None
    cache_expiration: datetime | None = None
    result_ref: str | None = None
    runner: str | None = None
    transition_id: str | None = None
    #: FAILED/CRASHED (and AwaitingRetry after a failed attempt): the class of the
    #: exception that ended the attempt, qualified by its module unless a builtin.
    error_type: str | None = None
    #: The formatted traceback of that exception, at most MAX_TRACEBACK_CHARS.
    traceback: str | None = None


class State(msgspec.Struct, frozen=True, kw_only=True):
    type: StateType
    name: str
    timestamp: datetime
    message: str | None = None
    details: StateDetails = StateDetails()
    #: A JSON-able result or error payload; large results live in a result
    #: store and are referenced by ``details.result_ref`` instead.
    data: Any = None

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def describe(self) -> str:
        if self.name == DEFAULT_NAMES[self.type]:
            return self.name
        return f"{self.name} ({self.type.value})"
