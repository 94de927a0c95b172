"""The cancellation-watcher: finishes cancellations and detects dead runners.

Cancellation: it follows every run's writes (the ``flow_runs`` stream, each
write a run event, ``shared.runlog``; an ordered consumer rebuilt after a
reconnect), and on start and every sweep it lists
every Cancelling run, so a cancel made while no watcher ran is carried out
as soon as one does. For each it asks the runner holding the run
(``runner.kill.<name>``) to stop its process tree; that runner reports
Cancelled once the process is gone. A run is marked Cancelled here only when
its process is known to be gone: its live runner says it has no process for
it (asked twice, one lease apart), or its runner's lease has lapsed, which
means the process stopped itself at its fencing deadline
(``engine.runner._fence``). A runner that does not answer leaves the run
Cancelling until the next sweep.

Crash detection: runners heartbeat into ``runner_heartbeats`` with a TTL of
two intervals. When an entry expires (a KV watch sees the expiry marker), or
a periodic sweep finds an active run whose runner has no live heartbeat, the
runner's runs are settled, each only after reading the heartbeat entry again
(it must still be expired) and with the state it was read in as the
proposal's expected state: Pending ones are released to Scheduled, so
another runner takes them; Running or Paused ones become Crashed (their
lease was lost: their bodies were fenced before it lapsed); Cancelling ones
become Cancelled.

It never imports user code and never writes state itself: every change is a
proposal to the orchestrator.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import AsyncExitStack
from datetime import timedelta

import anyio
import anyio.abc
import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from engine.client import Client
from services._service import Service
from shared import names, runlog, telemetry
from shared.bootstrap import bootstrap
from shared.clock import Clock, SystemClock
from shared.codec import decode, decode_reply, encode
from shared.connection import close, connect
from shared.errors import SluiceError, StackUnavailable
from shared.messages import (
    Decision,
    FlowRunDeleted,
    KillReply,
    KillRun,
    ProposedState,
    RunnerStatus,
)
from shared.models import FlowRun
from shared.settings import Settings
from shared.slots import is_live
from shared.states import StateType

from ._rules import orphaned, settled

log = logging.getLogger("sluice.watcher")

ACTIVE = ["PENDING", "RUNNING", "PAUSED", "CANCELLING"]


class CancellationWatcher(Service):
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        kill_grace: float = 10.0,
        sweep_seconds: float | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.clock = clock or SystemClock()
        self.kill_grace = kill_grace
        self.sweep_seconds = sweep_seconds or settings.heartbeat_interval
        self._alive: dict[str, RunnerStatus] = {}
        #: Runs whose cancel is being carried out (events and sweeps overlap).
        self._cancelling: set[str] = set()

    async def _start(self, stack: AsyncExitStack) -> None:
        telemetry.serve_as("sluice-cancellation-watcher")  # its own service.name in sluice dev
        stack.callback(
            telemetry.observe("sluice.runner.slots.in_use", lambda: self._runner_slots(False))
        )
        stack.callback(
            telemetry.observe("sluice.runner.slots.free", lambda: self._runner_slots(True))
        )
        nc = await connect(self.settings, name="sluice-cancellation-watcher")
        stack.push_async_callback(close, nc)
        await bootstrap(nc.jetstream(), self.settings)
        self.client = Client(self.settings, nc=nc)
        tg = self._work = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        await tg.start(self._follow_heartbeats)
        await tg.start(self._follow_events)
        tg.start_soon(self._sweep_forever)
        log.info("cancellation-watcher watching runs and runners")

    # --- cancellation ---------------------------------------------------------------
    async def _follow_events(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        js = self.client.nc.jetstream()
        started = False
        async with anyio.create_task_group() as work:
            while True:
                reconnects = self.client.nc.stats["reconnects"]
                try:
                    sub = await js.subscribe(
                        runlog.SUBJECTS,
                        stream=runlog.STREAM,
                        ordered_consumer=True,
                        config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
                    )
                except (nats.errors.Error, TimeoutError) as exc:
                    log.warning("cannot follow run events (%s); retrying", exc)
                    await anyio.sleep(1.0)
                    continue
                if not started:
                    started = True
                    task_status.started()
                try:
                    while self.client.nc.stats["reconnects"] == reconnects:
                        try:
                            msg = await sub.next_msg(timeout=1.0)
                        except nats.errors.TimeoutError:
                            continue
                        try:
                            event = runlog.event_of(msg)
                        except msgspec.DecodeError:
                            continue
                        if isinstance(event, FlowRunDeleted):
                            continue  # only runs not under way are deleted
                        # Only a run's newest write is sure to arrive. A run
                        # whose Cancelling was not delivered has left it, and
                        # Cancelling leads only to an end (the orchestrator's
                        # rules): its history needs no action here.
                        run = event.flow_run
                        if run.state.type is StateType.CANCELLING:
                            work.start_soon(self._cancel, run)
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                # A Cancelling run whose event we may have missed meanwhile:
                work.start_soon(self._settle_cancelling)

    async def _settle_cancelling(self) -> None:
        """Carry out every Cancelling run's cancel (reconciliation)."""
        with contextlib.suppress(SluiceError):
            page = await self.client.list_flow_runs(states=["CANCELLING"], limit=1000)
            for run in page.flow_runs:
                if run.id not in self._cancelling:
                    self._work.start_soon(self._cancel, run)

    async def _cancel(self, run: FlowRun) -> None:
        """Have the run's process stopped; Cancelled follows from its runner, or from us."""
        if run.id in self._cancelling:
            return
        self._cancelling.add(run.id)
        try:
            await self._carry_out(run.id)
        except SluiceError as exc:
            log.warning("could not finish cancelling run %s: %s", run.id, exc.message)
        finally:
            self._cancelling.discard(run.id)

    async def _carry_out(self, run_id: str) -> None:
        for asked in range(2):
            run = await self.client.read_flow_run(run_id)
            if run.state.type is not StateType.CANCELLING:
                return
            if run.runner is None:
                why = (
                    "Cancelled without stopping a process: no runner holds this run "
                    "(it was started outside a runner); cancellation cannot be guaranteed."
                )
                await self._propose_cancelled(run, why)
                return
            if not await self._heartbeat_live(run.runner):
                await self._settle(run, run.runner, self._alive.get(run.runner))
                return
            found = await self._ask_kill(run)
            if found is not False:
                return  # its runner reports Cancelled once the process is gone, or we retry
            if asked == 0:
                # A runner restarted under the same name does not know its old
                # instance's process; that one ends itself within one lease.
                await anyio.sleep(2 * self.settings.heartbeat_interval)
        await self._propose_cancelled(
            run, f"Cancelled: runner {run.runner} has no process for this run any more."
        )

    async def _ask_kill(self, run: FlowRun) -> bool | None:
        """Ask the run's runner to kill it: True (it will), False (no such process),
        None (no answer; the next sweep asks again)."""
        assert run.runner is not None
        try:
            reply = await self.client.nc.request(
                names.runner_kill_subject(run.runner),
                encode(KillRun(id=run.id, attempt=run.attempt, grace_seconds=self.kill_grace)),
                timeout=self.kill_grace + 5,
            )
            return decode_reply(reply.data, KillReply).found
        except (nats.errors.Error, TimeoutError, SluiceError) as exc:
            log.warning("runner %s did not kill run %s: %s", run.runner, run.id, exc)
            return None

    async def _propose_cancelled(self, run: FlowRun, message: str) -> None:
        await self.client.propose_state(
            run.id,
            ProposedState(type=StateType.CANCELLED, message=message),
            expected=StateType.CANCELLING,
        )

    async def _heartbeat_live(self, runner: str) -> bool:
        """Is the runner's heartbeat entry live now (read from the stream, not
        our watch, which may lag)? Unknown (NATS trouble) counts as live:
        nothing is taken from a runner that may still hold its lease."""
        try:
            msg = await self.client.nc.jetstream().get_last_msg(
                names.kv_stream(names.HEARTBEATS_BUCKET), f"$KV.{names.HEARTBEATS_BUCKET}.{runner}"
            )
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, TimeoutError):
            return True
        return is_live(msg)

    # --- dead runners ------------------------------------------------------------------
    async def _follow_heartbeats(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        kv = await self.client.nc.jetstream().key_value(names.HEARTBEATS_BUCKET)
        started = False
        async with anyio.create_task_group() as work:
            while True:
                reconnects = self.client.nc.stats["reconnects"]
                try:  # a server just restarted may not answer JetStream yet
                    watcher = await kv.watchall()
                except (nats.errors.Error, TimeoutError) as exc:
                    log.warning("cannot follow runner heartbeats (%s); retrying", exc)
                    await anyio.sleep(1.0)
                    continue
                try:
                    while self.client.nc.stats["reconnects"] == reconnects:
                        try:
                            entry = await watcher.updates(timeout=1.0)
                        except nats.errors.TimeoutError:
                            continue
                        if entry is None:  # the current values are in
                            if not started:
                                started = True
                                task_status.started()
                            continue
                        if entry.operation in ("DEL", "PURGE") or not entry.value:
                            lost = self._alive.pop(entry.key, None)
                            work.start_soon(self._runner_lost, entry.key, lost)
                            continue
                        with contextlib.suppress(msgspec.DecodeError):
                            self._alive[entry.key] = decode(entry.value, RunnerStatus)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    async def _sweep_forever(self) -> None:
        while True:  # cancels first: on start, one made while no watcher ran
            await self._settle_cancelling()
            await anyio.sleep(self.sweep_seconds)
            with contextlib.suppress(StackUnavailable):
                await self.sweep()

    async def sweep(self) -> None:
        """Settle active runs whose runner has no live heartbeat (missed expiries),
        and release Pending claims their live runner does not know it holds."""
        grace = timedelta(seconds=2 * self.settings.heartbeat_interval)
        page = await self.client.list_flow_runs(states=ACTIVE, limit=1000)
        for run in page.flow_runs:
            if run.runner is None:
                continue
            status = self._alive.get(run.runner)
            if status is not None:
                if orphaned(run, status, grace + timedelta(seconds=self.settings.request_timeout)):
                    await self._release_orphan(run)
                continue
            if self.clock.now() - run.state.timestamp < grace:
                continue  # claimed moments ago: its first heartbeat may still come
            await self._settle(run, run.runner, None)

    async def _release_orphan(self, run: FlowRun) -> None:
        """A claim whose reply its runner never got (a stall ate it): offer the run
        again. The release spends the attempt, so should the reply arrive after
        all, that runner's process is refused and starts no body."""
        with contextlib.suppress(SluiceError):
            reply = await self.client.propose_state(
                run.id,
                ProposedState(
                    type=StateType.SCHEDULED,
                    message=f"runner {run.runner} does not hold this claim (its heartbeats "
                    "do not name it); offered to another runner",
                ),
                attempt=run.attempt,
                release=True,
                expected=StateType.PENDING,
            )
            log.warning(
                "run %s: orphaned claim of %s -> %s", run.id, run.runner, reply.status.value
            )

    def _runner_slots(self, free: bool) -> list[tuple[float, dict[str, str]]]:
        """Slots of each live runner, in use or free (gauges; read on the exporter's thread)."""
        out = []
        for status in list(self._alive.values()):
            used = len(status.runs)
            value = max(status.limit - used, 0) if free else used
            out.append((float(value), {"runner": status.runner}))
        return out

    async def _runner_lost(self, runner: str, last: RunnerStatus | None) -> None:
        telemetry.record_heartbeat_missed(runner)
        ids = {held.id for held in last.runs} if last else set()
        with contextlib.suppress(SluiceError):
            page = await self.client.list_flow_runs(runner=runner, states=ACTIVE, limit=1000)
            ids |= {r.id for r in page.flow_runs}
        for run_id in ids:
            try:
                run = await self.client.read_flow_run(run_id)
            except SluiceError:
                continue
            if run.runner == runner:
                await self._settle(run, runner, last)

    async def _settle(self, run: FlowRun, runner: str, last: RunnerStatus | None) -> None:
        """Settle one run of a runner whose lease lapsed: release, crash or cancel it.

        Read afresh after the heartbeat was found expired, and proposed with
        the state it was read in: a run that moved on meanwhile is judged again.
        """
        seen = f" (last heartbeat {last.at.isoformat(timespec='seconds')})" if last else ""
        gone = f"runner {runner} stopped heartbeating{seen}"
        for _ in range(3):
            try:
                if await self._heartbeat_live(runner):
                    return  # back, and its lease covers its runs again
                run = await self.client.read_flow_run(run.id)
                if run.runner != runner:
                    return
                state = settled(run.state.type, gone)
                if state is None:
                    return
                reply = await self.client.propose_state(
                    run.id,
                    state,
                    attempt=run.attempt,
                    release=state.type is StateType.SCHEDULED,
                    expected=run.state.type,
                )
            except SluiceError as exc:
                log.warning("could not settle run %s of lost runner %s: %s", run.id, runner, exc)
                return
            log.warning("run %s: %s -> %s", run.id, gone, reply.status.value)
            if reply.status is not Decision.REJECT:
                return
