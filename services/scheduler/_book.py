"""What the scheduler knows about runs: a cache of the run events, in memory.

Owns bookkeeping only — no I/O. It holds every Scheduled run that is still
to be offered (to time its dispatch), and every unfinished run a schedule
created (to judge overlap), keyed by run id and, for schedule runs, by slot.
It is rebuilt from ``flowrun.list`` at start-up and after a reconnect, and
kept current from the ``flow_runs`` stream (``$KV.flow_runs.>``); it is never
a source of truth: every action it leads to is a request the orchestrator
judges again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from shared.messages import Dispatch
from shared.states import ACTIVE_TYPES, StateType

from ._slots import SlotKey

__all__ = ["Book", "Entry", "ScheduleId", "SlotId"]

ENDED = 10_000

ScheduleId = tuple[str, str]
"""``(deployment_id, schedule digest)``"""
SlotId = tuple[str, str, datetime]
"""``(deployment_id, schedule digest, slot)``"""


@dataclass(slots=True, eq=False)
class Entry:
    """One run (or, with ``run_id`` None, a held slot whose run is not created yet)."""

    item: Dispatch
    """The offer to publish: run id, deployment, queue, attempt, scheduled time."""
    state: StateType
    name: str
    key: SlotKey | None = None
    revision: int = 0
    dispatched: bool = False
    """Offered to runners (by us or by the orchestrator)."""
    held: bool = False
    """Due, but waiting for earlier runs to end (overlap policy)."""
    skipped: bool = False
    created: bool = True
    """False for a held slot whose run does not exist yet."""
    trace: dict[str, str] | None = None
    """The creator's trace context stored with the run (``traceparent``), if any."""

    @property
    def run_id(self) -> str:
        return self.item.flow_run_id

    @property
    def due(self) -> datetime:
        return self.item.scheduled_time

    @property
    def deployment_id(self) -> str:
        return self.item.deployment_id or ""

    @property
    def slot_id(self) -> SlotId | None:
        return (self.key.deployment_id, self.key.digest, self.key.slot) if self.key else None

    @property
    def going(self) -> bool:
        """Counts against overlap: offered or started, and not finished."""
        if self.held or self.skipped:
            return False
        return self.state in ACTIVE_TYPES or (self.state is StateType.SCHEDULED and self.dispatched)


class Book:
    def __init__(self) -> None:
        self.runs: dict[str, Entry] = {}
        self.slots: dict[SlotId, Entry] = {}
        self._by_deployment: dict[str, dict[SlotId, Entry]] = {}
        #: Runs an event said have ended (finished or deleted) since the last
        #: listing, the newest ENDED of them: a value of unknown age (a list page
        #: asked for before) must not bring one back. A run's write reaches the
        #: scheduler as soon as it is stored, often before such a page's reply.
        self._ended: OrderedDict[str, None] = OrderedDict()

    def end(self, run_id: str) -> None:
        self._ended[run_id] = None
        self._ended.move_to_end(run_id)
        if len(self._ended) > ENDED:
            self._ended.popitem(last=False)

    def reopen(self, run_id: str) -> None:
        """An event says the run goes on (a retry): values of it count again."""
        self._ended.pop(run_id, None)

    def has_ended(self, run_id: str) -> bool:
        return run_id in self._ended

    def __len__(self) -> int:
        return len(self.runs)

    def add(self, entry: Entry) -> None:
        if entry.created:
            self.runs[entry.run_id] = entry
        sid = entry.slot_id
        if sid is not None:
            old = self.slots.get(sid)
            if old is not None and old is not entry and old.created:
                self.runs.pop(old.run_id, None)
            self.slots[sid] = entry
            self._by_deployment.setdefault(sid[0], {})[sid] = entry

    def drop(self, entry: Entry) -> None:
        if entry.created and self.runs.get(entry.run_id) is entry:
            del self.runs[entry.run_id]
        sid = entry.slot_id
        if sid is not None and self.slots.get(sid) is entry:
            del self.slots[sid]
            of_deployment = self._by_deployment.get(sid[0])
            if of_deployment is not None:
                of_deployment.pop(sid, None)
                if not of_deployment:
                    del self._by_deployment[sid[0]]

    def clear(self) -> list[Entry]:
        """Forget everything; returns what was known (to carry decisions over)."""
        known = list(self.runs.values()) + [e for e in self.slots.values() if not e.created]
        self.runs.clear()
        self.slots.clear()
        self._by_deployment.clear()
        self._ended.clear()  # the listing that follows is as new as the events
        return known

    def of_deployment(self, deployment_id: str) -> list[Entry]:
        return list(self._by_deployment.get(deployment_id, {}).values())

    def going(self, deployment_id: str, before: datetime | None = None) -> list[Entry]:
        """The deployment's schedule runs that are going (of earlier slots)."""
        return [
            e
            for e in self._by_deployment.get(deployment_id, {}).values()
            if e.going and (before is None or (e.key is not None and e.key.slot < before))
        ]

    def held(self, deployment_id: str) -> Entry | None:
        for e in self._by_deployment.get(deployment_id, {}).values():
            if e.held:
                return e
        return None
