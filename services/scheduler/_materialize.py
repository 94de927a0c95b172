"""Materialization: keep each schedule's upcoming runs created, and remove stale ones.

Owns the schedules in force (one :class:`ScheduleState` each) and the runs
they create. A pass over a schedule creates, through ``flowrun.create``, the
runs of every slot within the horizon (and at least ``min_runs`` ahead), then
sets one timer for when the next pass is needed; so a pass costs what is
due, not what is registered.

Idempotency: a slot's run has the key ``schedule:<deployment id>:<schedule
digest>:<slot UTC>``, so any number of schedulers, restarted any number of
times, create it once. A run the scheduler removes (schedule paused,
changed, deleted) is deleted through ``flowrun.delete``, which frees its key:
when the slot is wanted again (resumed) the same key makes its run again, so
a pause leaves no trace in the run list. Runs that older versions removed by
cancelling them (message ``Removed by the scheduler:``) are still walked
past with the next generation of the key (``…:r1``, ``…:r2``) — every
scheduler walks the same chain, so they still agree.

Catch-up: when the scheduler starts, a schedule's slots since ``now -
catch-up window`` (but not before the deployment was last changed) are
looked at too; a missed one is judged like a due slot
(``_policy``) and created only if it is to start (created in the past, the
orchestrator offers it at once). Slots older than the window are not created.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

from engine.client import Client
from shared.clock import Clock
from shared.errors import Conflict, DeploymentNotFound, FlowRunNotFound, SluiceError
from shared.messages import FlowRunPage
from shared.models import DeploymentSchedule, FlowRun
from shared.settings import Settings
from shared.states import StateType

from ._book import Book, Entry, ScheduleId
from ._dispatch import Dispatcher
from ._marks import (
    REMOVED,
    SKIPPED,
    ScheduleState,
    cancelled_by_scheduler,
    key_of,
    placeholder,
)
from ._policy import Action
from ._slots import SlotKey, iter_slots, schedule_hash, slot_key
from ._timers import Timers
from ._view import DeploymentView

__all__ = ["ScheduleState", "Schedules"]

log = logging.getLogger("sluice.scheduler")

AUTO_TAG = "auto-scheduled"
BACKFILL_TAG = "backfill"
#: Generations of one slot's key before giving up (each is a pause/resume).
MAX_GENERATIONS = 1000
#: Slots created by one pass at most; the pass after it continues.
MAX_PER_PASS = 5000
RETRY_SECONDS = 10.0
#: Passes run this much ahead of need: 7.5 s keeps them clear of the minute
#: (and half-minute, 10 s, 5 s) marks where most slots fall.
LEAD = timedelta(seconds=7.5)
PAGE = 1000


class Schedules:
    def __init__(
        self,
        settings: Settings,
        client: Client,
        book: Book,
        timers: Timers,
        view: DeploymentView,
        dispatcher: Dispatcher,
        clock: Clock,
    ) -> None:
        self.client = client
        self.book = book
        self.timers = timers
        self.view = view
        self.dispatcher = dispatcher
        self.clock = clock
        self.horizon = timedelta(seconds=settings.schedule_horizon_seconds)
        self.min_runs = max(1, settings.schedule_min_runs)
        self.default_window = settings.schedule_catchup_seconds
        self.states: dict[ScheduleId, ScheduleState] = {}
        self._by_deployment: dict[str, set[str]] = {}
        self.created = 0

    # --- which schedules are in force ---------------------------------------------------
    def set_wanted(self, deployment_id: str, *, catch_up: bool) -> set[str]:
        """Bring the deployment's schedule states in line with the view.

        Returns the digests that left force; their not-yet-started runs are
        for :meth:`sweep` to remove. A schedule new to force gets a pass now.
        """
        after = self.view.wanted(deployment_id)
        deployment = self.view.get(deployment_id)
        mine = self._by_deployment.setdefault(deployment_id, set())
        gone = {digest for digest in mine if digest not in after}
        for digest in gone:
            mine.discard(digest)
            self.states.pop((deployment_id, digest), None)
            self.timers.cancel(("m", deployment_id, digest))
        for digest, item in after.items():
            assert deployment is not None
            window = item.catchup_window_seconds or self.default_window
            state = self.states.get((deployment_id, digest))
            if state is not None:  # same timing and parameters: keep its runs
                state.deployment, state.item, state.window = deployment, item, window
                continue
            mine.add(digest)
            self.states[(deployment_id, digest)] = ScheduleState(
                deployment=deployment, item=item, digest=digest, window=window, catch_up=catch_up
            )
            self.timers.set(("m", deployment_id, digest), self.clock.now())
        if not mine:
            del self._by_deployment[deployment_id]
        return gone

    def why_gone(self, deployment_id: str) -> str:
        deployment = self.view.get(deployment_id)
        if deployment is None:
            return "deployment deleted"
        if deployment.paused:
            return "deployment paused"
        newest = self.view.newest(deployment.full_name)
        if newest is not None and newest.id != deployment_id:
            return f"replaced by version {newest.version or newest.id} of the deployment"
        return "schedule changed or deactivated"

    def stale_runs(self) -> dict[str, set[str]]:
        """Schedules with upcoming runs in the book that are not in force (at start-up)."""
        now = self.clock.now()
        out: dict[str, set[str]] = {}
        for entry in self.book.runs.values():
            key = entry.key
            if key is None or entry.state is not StateType.SCHEDULED or entry.due <= now:
                continue
            if (key.deployment_id, key.digest) not in self.states:
                out.setdefault(key.deployment_id, set()).add(key.digest)
        return out

    # --- creating runs --------------------------------------------------------------------
    async def materialize(self, sid: ScheduleId) -> None:
        """One pass: create the schedule's runs up to the horizon, then set the next timer."""
        state = self.states.get(sid)
        if state is None:
            return
        now = self.clock.now()
        if state.frontier is not None:
            start = state.frontier
        elif state.catch_up:  # never before the deployment took its present form
            start = max(now - timedelta(seconds=state.window), state.deployment.updated)
            start = min(start, now)
        else:
            start = now
        while state.upcoming and state.upcoming[0] <= now:
            state.upcoming.popleft()
        # Work as if LEAD seconds later, so the next pass comes a little before
        # it is strictly needed — off the round times at which runs fall due.
        later = now + LEAD
        end, ahead = later + self.horizon, sum(slot > later for slot in state.upcoming)
        todo: list[datetime] = []
        following: datetime | None = None
        try:
            for slot in iter_slots(state.item.schedule, start):
                if (slot > end and ahead >= self.min_runs) or len(todo) >= MAX_PER_PASS:
                    following = slot
                    break
                todo.append(slot)
                ahead += slot > later
        except ValueError as exc:
            log.error("schedule of %s cannot be evaluated: %s", state.deployment.full_name, exc)
            return
        for slot in todo:
            try:
                await self._handle_slot(state, slot, now)
            except SluiceError as exc:
                log.warning(
                    "could not create the %s run of %s: %s; retrying in %gs",
                    slot.isoformat(),
                    state.deployment.full_name,
                    exc.message,
                    RETRY_SECONDS,
                )
                self._wake(state, now + timedelta(seconds=RETRY_SECONDS))
                return
            if self.states.get(sid) is not state:
                return  # removed or changed meanwhile; the sweep cleans up
            state.frontier = slot
            if slot > now:
                state.upcoming.append(slot)
        state.catch_up = False
        if following is None:
            return  # the schedule has no more slots
        # The first moment either promise (the horizon, min_runs ahead) would break:
        wake = following - self.horizon
        if len(state.upcoming) >= self.min_runs:
            wake = min(wake, state.upcoming[len(state.upcoming) - self.min_runs])
        self._wake(state, max(wake - LEAD, now))

    def _wake(self, state: ScheduleState, when: datetime) -> None:
        self.timers.set(("m", *state.sid), when)

    async def _handle_slot(self, state: ScheduleState, slot: datetime, now: datetime) -> None:
        deployment = state.deployment
        sid = (deployment.id, state.digest, slot)
        known = self.book.slots.get(sid)
        if known is not None:
            return
        if slot > now:
            run = await self.ensure(deployment.id, state.digest, state.item, slot)
            self.dispatcher.observe(run)
            return
        # A slot missed while no scheduler ran: judge it as if due now.
        entry = Entry(
            item=placeholder(deployment.id, deployment.queue, slot),
            state=StateType.SCHEDULED,
            name="Scheduled",
            key=SlotKey(deployment.id, state.digest, slot, 0),
            created=False,
        )
        verdict, going, superseded = self.dispatcher.judge(entry, state)
        if verdict.action is Action.SKIP:
            log.info(
                "skipping missed slot %s of %s: %s",
                slot.isoformat(),
                deployment.full_name,
                verdict.reason,
            )
            return
        self.book.add(entry)
        if verdict.action is Action.DISPATCH:
            await self.create_held(entry)  # created in the past: the orchestrator offers it
        else:
            await self.dispatcher.carry_out(entry, verdict, going, superseded)

    async def create_held(self, entry: Entry) -> None:
        """Create the run of a slot decided to start (in the past: offered at once)."""
        assert entry.key is not None
        state = self.states.get((entry.key.deployment_id, entry.key.digest))
        if state is None:
            self.book.drop(entry)
            return
        try:
            run = await self.ensure(entry.deployment_id, state.digest, state.item, entry.key.slot)
        except BaseException:
            self.book.drop(entry)
            raise
        self.dispatcher.observe(run)

    async def refill(self, key: SlotKey) -> None:
        state = self.states.get((key.deployment_id, key.digest))
        if state is not None and key.slot > self.clock.now():
            run = await self.ensure(key.deployment_id, key.digest, state.item, key.slot)
            self.dispatcher.observe(run)

    async def ensure(
        self,
        deployment_id: str,
        digest: str,
        item: DeploymentSchedule,
        slot: datetime,
        *,
        backfill: bool = False,
    ) -> FlowRun:
        """The slot's run: created, or the one that exists (walking past removed ones)."""
        replaceable = (REMOVED, SKIPPED) if backfill else (REMOVED,)
        for generation in range(MAX_GENERATIONS):
            run = await self.client.create_flow_run(
                deployment_id=deployment_id,
                scheduled_start_time=slot,
                idempotency_key=slot_key(deployment_id, digest, slot, generation),
                parameters=dict(item.parameters) if item.parameters else None,
                tags=[BACKFILL_TAG if backfill else AUTO_TAG],
            )
            if not cancelled_by_scheduler(run, replaceable):
                self.created += 1
                return run
        raise SluiceError(f"slot {slot.isoformat()} was removed {MAX_GENERATIONS} times")

    # --- removing runs -------------------------------------------------------------------
    async def sweep(self, deployment_id: str, digests: set[str], why: str) -> None:
        """Delete the not-yet-started runs of schedules that left force.

        Reads the deployment again first: a resume that came meanwhile keeps
        its runs. Runs already offered (their time came) are left to run.
        """
        try:
            fresh = await self.client.read_deployment(id=deployment_id)
        except DeploymentNotFound:
            fresh = None
        in_force = set()
        if fresh is not None and not fresh.paused:
            newest = self.view.newest(fresh.full_name)
            if newest is None or newest.id == fresh.id:
                in_force = {schedule_hash(i) for i in fresh.schedules if i.active}
        doomed = digests - in_force
        if not doomed:
            return
        for entry in self.book.of_deployment(deployment_id):
            if not entry.created and entry.key is not None and entry.key.digest in doomed:
                self.book.drop(entry)
        now = self.clock.now()
        runs: list[FlowRun] = []
        offset: int | None = 0
        while offset is not None:
            page: FlowRunPage = await self.client.list_flow_runs(
                deployment=deployment_id, states=["SCHEDULED"], limit=PAGE, offset=offset
            )
            runs.extend(page.flow_runs)
            offset = page.next_offset
        removed = 0
        for run in runs:  # listed first: deleting shifts the pages
            key = key_of(run)
            if key is None or key.digest not in doomed:
                continue
            known = self.book.runs.get(run.id)
            if run.expected_start_time <= now and (known is None or known.dispatched):
                continue  # already offered: it runs
            with contextlib.suppress(Conflict, FlowRunNotFound):  # it started meanwhile
                await self.client.delete_flow_run(run.id, reason=why, scheduled_only=True)
                removed += 1
        if removed:
            log.info("removed %d upcoming run(s) of deployment %s: %s", removed, deployment_id, why)
