"""Due dispatch: offer each Scheduled run to the runners when its time comes.

"When its time comes" is ``dispatch_lead_seconds`` (default 2 s) before it:
runners hold an early offer and start the run at its time (their prefetch
window; the orchestrator makes an early claim WAIT anyway), so a thousand
runs due at one instant are stored before it, and the claims alone remain.

Owns the timers of runs (``("d", id)`` to offer, ``("l", id)`` to mark Late)
and the overlap and catch-up decisions for schedule runs. It learns runs
from the event stream (:meth:`Dispatcher.observe`, synchronous, cheap) and
acts when a timer fires.

Who offers a run: the orchestrator offers a run that is due when it is
written; so a Scheduled run whose last write (``updated``) is at or after its
time was offered, and one written before its time is ours to offer at that
time. An offer is a ``Dispatch`` item on ``flowrun.dispatch.<queue>.<id>``
with the orchestrator's ``Nats-Msg-Id`` (``shared.dispatch``): two
schedulers, or a scheduler and the orchestrator, offering one run store it
once, and the PENDING claim decides anyway.

Late: a run offered and still Scheduled ``late_after`` seconds after its
time is proposed ``SCHEDULED``/``Late`` (its scheduled time kept, with its
claim attempt, so a claim that won meanwhile makes the proposal fail). It
is still offered and still runs.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta

import anyio
from nats.js import JetStreamContext

from engine.client import Client
from shared import names, telemetry
from shared.clock import Clock
from shared.dispatch import dispatch_item, dispatch_message, run_trace
from shared.errors import Conflict, FlowRunNotFound
from shared.messages import ProposedState
from shared.models import FlowRun
from shared.states import LATE, TERMINAL_TYPES, StateDetails, StateType

from ._book import Book, Entry
from ._marks import (
    REMOVED,
    SKIPPED,
    ScheduleSource,
    ScheduleState,
    cancelled_by_scheduler,
    key_of,
)
from ._policy import Action, Verdict, judge
from ._timers import Timers
from ._work import Work

__all__ = ["Dispatcher"]

log = logging.getLogger("sluice.scheduler")

RETRY_SECONDS = 1.0
ACK_TIMEOUT = 10.0


class Dispatcher:
    def __init__(
        self,
        book: Book,
        timers: Timers,
        work: Work,
        client: Client,
        js: JetStreamContext,
        clock: Clock,
        *,
        late_after: float,
        lead: float = 0.0,
    ) -> None:
        self.book = book
        self.timers = timers
        self.work = work
        self.client = client
        self.js = js
        self.clock = clock
        self.late_after = timedelta(seconds=late_after)
        self.lead = timedelta(seconds=max(0.0, lead))
        self.schedules: ScheduleSource | None = None
        self.offered = 0

    def _state_of(self, entry: Entry) -> ScheduleState | None:
        if entry.key is None or self.schedules is None:
            return None
        return self.schedules.states.get((entry.key.deployment_id, entry.key.digest))

    def backlog(self) -> list[tuple[float, dict[str, str]]]:
        """Runs offered to runners and not claimed yet, by queue (the backlog gauge).

        Read on the metrics exporter's thread: it copies the book before counting.
        """
        counts: dict[str, int] = {}
        for entry in list(self.book.runs.values()):
            if entry.dispatched and entry.state is StateType.SCHEDULED:
                counts[entry.item.queue] = counts.get(entry.item.queue, 0) + 1
        return [(float(n), {"queue": queue}) for queue, n in counts.items()]

    # --- learning runs ------------------------------------------------------------------
    def observe(self, run: FlowRun, revision: int = 0) -> None:
        """Take in a run's newest known value (an event, a list page, a create reply).

        ``revision`` 0 means "of unknown age": it only fills a gap, never
        overrides what an event told.
        """
        if run.deployment_id is None or run.agentless:
            return
        if revision == 0 and self.book.has_ended(run.id):
            return  # an event said it ended; a value of unknown age cannot undo that
        entry = self.book.runs.get(run.id)
        if entry is not None and (revision == 0 or revision <= entry.revision):
            return
        key = key_of(run)
        kind = run.state.type
        if revision:
            (self.book.end if kind in TERMINAL_TYPES else self.book.reopen)(run.id)
        if entry is None and key is not None:
            other = self.book.slots.get((key.deployment_id, key.digest, key.slot))
            if other is not None and not other.created:
                entry = other  # a held or placeholder slot: this is its run
            elif other is not None and kind in TERMINAL_TYPES:
                self._ended(run)  # an older generation of a slot that has a newer one
                return
        if kind in TERMINAL_TYPES or (key is None and kind is not StateType.SCHEDULED):
            if entry is not None:
                self._forget(entry)
            if key is not None:
                self._ended(run)
            return
        item = dispatch_item(run)
        fresh = (
            entry is None
            or not entry.created
            or entry.state is not StateType.SCHEDULED
            or entry.item.attempt != item.attempt
            or entry.due != item.scheduled_time
        )
        converting = entry is not None and not entry.created
        if entry is None:
            entry = Entry(item=item, state=kind, name=run.state.name, key=key)
        was_held, was_dispatched = entry.held, entry.dispatched
        entry.item, entry.state, entry.name = item, kind, run.state.name
        entry.revision, entry.created = max(entry.revision, revision), True
        entry.trace = run_trace(run) or None
        self.book.add(entry)
        if kind is not StateType.SCHEDULED:
            entry.held = entry.skipped = False
            self.timers.cancel(("d", run.id))
            self.timers.cancel(("l", run.id))
            return
        if not fresh:
            if entry.name == LATE:
                self.timers.cancel(("l", run.id))
            return
        entry.held = entry.skipped = entry.dispatched = False
        if run.state.name == LATE or item.scheduled_time <= run.updated:
            entry.dispatched = True  # the orchestrator offered it when it wrote it
            self._arm_late(entry)
        elif converting and (was_held or was_dispatched):  # the slot's decision stands
            entry.held, entry.dispatched = was_held, was_dispatched
            if was_dispatched:
                self.work.spawn(lambda: self._offer(entry), f"offering run {run.id}")
        else:
            self.timers.set(("d", run.id), item.scheduled_time - self.lead)

    def rebuild(self, runs: list[FlowRun]) -> None:
        """Start over from a listing, keeping the decisions taken about the same runs."""
        old = self.book.clear()
        known = {e.run_id: e for e in old if e.created}
        for run in runs:
            self.observe(run)
            entry, before = self.book.runs.get(run.id), known.get(run.id)
            if entry is None or before is None or entry.state is not StateType.SCHEDULED:
                continue
            if (before.item.attempt, before.due) == (entry.item.attempt, entry.due):
                entry.dispatched = entry.dispatched or before.dispatched
                entry.held, entry.skipped = before.held, before.skipped
                if entry.dispatched or entry.held or entry.skipped:
                    self.timers.cancel(("d", run.id))
        for entry in old:  # held slots whose runs do not exist yet
            if not entry.created and entry.slot_id not in self.book.slots:
                self.book.add(entry)

    def deleted(self, run_id: str, run: FlowRun | None) -> None:
        """A run was deleted: stop tracking it, and make its slot again if a
        schedule still wants it (a sweep that raced a resume removed it).
        ``run`` is the run as it was, if the deletion said (a purge does not)."""
        self.book.end(run_id)
        entry = self.book.runs.get(run_id)
        if entry is not None:
            self._forget(entry)
        if run is None:
            return
        key = key_of(run)
        if (
            key is not None
            and self.schedules is not None
            and key.slot > self.clock.now()
            and (key.deployment_id, key.digest) in self.schedules.states
        ):
            schedules = self.schedules
            self.work.spawn(lambda: schedules.refill(key), f"refilling {run.deployment_name}")

    def _forget(self, entry: Entry) -> None:
        self.book.drop(entry)
        if entry.created:
            self.timers.cancel(("d", entry.run_id))
            self.timers.cancel(("l", entry.run_id))

    def _ended(self, run: FlowRun) -> None:
        """A schedule run finished: maybe start the held one, maybe fill its slot again."""
        key = key_of(run)
        if key is None:
            return
        if self.book.held(key.deployment_id) is not None:
            self.work.spawn(
                lambda: self.release(key.deployment_id), f"releasing {run.deployment_name}"
            )
        if (
            self.schedules is not None
            and cancelled_by_scheduler(run, (REMOVED,))
            and key.slot > self.clock.now()
            and (key.deployment_id, key.digest) in self.schedules.states
        ):
            # A sweep that raced a resume removed a run still wanted: fill the slot.
            schedules = self.schedules
            self.work.spawn(lambda: schedules.refill(key), f"refilling {run.deployment_name}")

    def _arm_late(self, entry: Entry) -> None:
        if entry.name != LATE:
            self.timers.set(("l", entry.run_id), entry.due + self.late_after)

    # --- acting -------------------------------------------------------------------------
    async def on_due(self, run_id: str) -> None:
        entry = self.book.runs.get(run_id)
        if entry is None or entry.state is not StateType.SCHEDULED:
            return
        if entry.dispatched or entry.held or entry.skipped:
            return
        if entry.due - self.lead > self.clock.now():  # moved later since the timer was set
            self.timers.set(("d", run_id), entry.due - self.lead)
            return
        if entry.key is None:
            entry.dispatched = True
            await self._offer(entry)
            return
        state = self._state_of(entry)
        if state is None:
            return  # no longer in force; the sweep that noticed cancels it
        verdict, going, superseded = self.judge(entry, state)
        await self.carry_out(entry, verdict, going, superseded)

    def judge(
        self, entry: Entry, state: ScheduleState
    ) -> tuple[Verdict, list[Entry], Entry | None]:
        """Decide about a due slot and record the decision at once (no await), so
        the next slot of the deployment is judged knowing this one's fate."""
        assert entry.key is not None
        deployment_id = entry.key.deployment_id
        going = [e for e in self.book.going(deployment_id, before=entry.key.slot) if e is not entry]
        found = self.book.held(deployment_id)
        held = found if found is not entry else None
        verdict = judge(
            slot=entry.key.slot,
            now=self.clock.now(),
            window=state.window,
            overlap=state.item.overlap,
            running=len(going),
            held=held is not None,
        )
        superseded = held if verdict.supersede_held else None
        if verdict.action is Action.DISPATCH:
            entry.dispatched = True
        elif verdict.action is Action.HOLD:
            entry.held = True
            if superseded is not None:
                superseded.held, superseded.skipped = False, True
        else:
            entry.skipped = True
        return verdict, going, superseded

    async def carry_out(
        self, entry: Entry, verdict: Verdict, going: list[Entry], superseded: Entry | None
    ) -> None:
        """Do what :meth:`judge` decided, for a run that exists."""
        what = f"slot {entry.due.isoformat()} of deployment {entry.deployment_id}"
        if verdict.action is Action.DISPATCH:
            await self._offer(entry)
        elif verdict.action is Action.SKIP:
            await self.skip(entry, verdict.reason)
        else:
            log.info("holding %s: %s", what, verdict.reason)
        if superseded is not None:
            await self.skip(superseded, "superseded by a newer slot (overlap policy cancel_other)")
        if verdict.cancel_running:
            for other in going:
                await self.cancel(
                    other.run_id,
                    f"Cancelled by the scheduler: overlap policy cancel_other; {what} is due",
                )

    async def skip(self, entry: Entry, reason: str) -> None:
        log.info("skipping slot %s of deployment %s: %s", entry.due, entry.deployment_id, reason)
        entry.skipped = True
        if entry.created:
            await self.cancel(entry.run_id, f"{SKIPPED} {reason}")
        else:
            self.book.drop(entry)

    async def release(self, deployment_id: str) -> None:
        """Start the deployment's held slot once nothing earlier is going."""
        held = self.book.held(deployment_id)
        if held is None or self.book.going(deployment_id):
            return
        held.held, held.dispatched = False, True
        if held.created:
            await self._offer(held)
        elif self.schedules is not None:
            await self.schedules.create_held(held)

    async def _offer(self, entry: Entry) -> None:
        if not entry.created:
            return  # a slot whose run is not created yet: its creation offers it
        subject, payload, headers = dispatch_message(entry.item)
        with telemetry.publish_span(
            subject,
            template=telemetry.DISPATCH_TEMPLATE,
            attributes={"sluice.flow_run.id": entry.run_id},
            context=telemetry.context_from_headers(entry.trace),  # the creator's trace
        ) as trace_headers:
            await self._publish(entry, subject, payload, {**headers, **(trace_headers or {})})

    async def _publish(
        self, entry: Entry, subject: str, payload: bytes, headers: dict[str, str]
    ) -> None:
        try:
            # Pipelined: a thousand runs due at once are a thousand publishes in
            # flight, not a thousand round trips in turn.
            ack = await self.js.publish_async(
                subject, payload, stream=names.DISPATCH_STREAM, headers=headers
            )
            with anyio.fail_after(ACK_TIMEOUT):
                await ack
        except BaseException:
            entry.dispatched = False  # offer again shortly
            self.timers.set(
                ("d", entry.run_id), self.clock.now() + timedelta(seconds=RETRY_SECONDS)
            )
            raise
        self.offered += 1
        # Behind the moment it meant to offer the run (its due time less the lead).
        meant = entry.due - self.lead
        telemetry.record_scheduler_lag((self.clock.now() - meant).total_seconds(), entry.item.queue)
        self._arm_late(entry)

    async def cancel(self, run_id: str, reason: str) -> None:
        with contextlib.suppress(Conflict, FlowRunNotFound):  # it finished meanwhile
            await self.client.cancel_flow_run(run_id, reason=reason)

    async def on_late(self, run_id: str) -> None:
        entry = self.book.runs.get(run_id)
        if entry is None or entry.state is not StateType.SCHEDULED or entry.name == LATE:
            return
        if not entry.dispatched:
            return
        if entry.due + self.late_after > self.clock.now():
            self._arm_late(entry)
            return
        run = await self.client.read_flow_run(run_id)
        if (
            run.state.type is not StateType.SCHEDULED
            or run.state.name == LATE
            or run.attempt != entry.item.attempt
            or run.expected_start_time != entry.due
        ):
            return
        seconds = self.late_after.total_seconds()
        await self.client.propose_state(
            run.id,
            ProposedState(
                type=StateType.SCHEDULED,
                name=LATE,
                message=f"not started {seconds:g}s after its scheduled time; still offered",
                details=StateDetails(scheduled_time=run.expected_start_time),
            ),
            attempt=run.attempt,
            transition_id=f"late:{run.id}:{run.attempt}",
        )
