"""What the scheduler's two halves share: a schedule in force, and the marks it leaves on runs.

:mod:`._materialize` keeps schedules' runs created and :mod:`._dispatch` offers due
runs; both read a :class:`ScheduleState`, a run's slot key and the messages the
scheduler writes when it cancels a run. They live here so that neither half
imports the other's internals (``_materialize`` uses the ``Dispatcher``;
``_dispatch`` sees the schedules only through :class:`ScheduleSource`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from shared.messages import Dispatch
from shared.models import Deployment, DeploymentSchedule, FlowRun
from shared.states import StateType

from ._book import Entry, ScheduleId
from ._slots import SlotKey, parse_key

__all__ = [
    "REMOVED",
    "SKIPPED",
    "ScheduleSource",
    "ScheduleState",
    "cancelled_by_scheduler",
    "key_of",
    "placeholder",
]

#: Message prefixes of runs the scheduler cancelled. A removed run's slot may
#: be filled again (schedule resumed); a skipped one only by a backfill.
REMOVED = "Removed by the scheduler:"
SKIPPED = "Skipped by the scheduler:"


@dataclass(slots=True, eq=False)
class ScheduleState:
    deployment: Deployment
    item: DeploymentSchedule
    digest: str
    window: float
    frontier: datetime | None = None
    """The last slot handled; the next pass starts after it."""
    upcoming: deque[datetime] = field(default_factory=deque)
    """Slots handled that are still ahead."""
    catch_up: bool = False

    @property
    def sid(self) -> ScheduleId:
        return (self.deployment.id, self.digest)


class ScheduleSource(Protocol):
    """What the dispatcher asks of the schedules in force (``_materialize.Schedules``)."""

    @property
    def states(self) -> Mapping[ScheduleId, ScheduleState]: ...

    async def refill(self, key: SlotKey) -> None: ...

    async def create_held(self, entry: Entry) -> None: ...


def key_of(run: FlowRun) -> SlotKey | None:
    """The slot a run was created for, if a schedule of its own deployment created it."""
    key = parse_key(run.idempotency_key)
    return key if key is not None and key.deployment_id == run.deployment_id else None


def cancelled_by_scheduler(run: FlowRun, prefixes: tuple[str, ...]) -> bool:
    message = run.state.message or ""
    return run.state.type is StateType.CANCELLED and message.startswith(prefixes)


def placeholder(deployment_id: str, queue: str, slot: datetime) -> Dispatch:
    """The offer of a slot whose run does not exist yet (no run id)."""
    return Dispatch(
        flow_run_id="", deployment_id=deployment_id, queue=queue, attempt=0, scheduled_time=slot
    )
