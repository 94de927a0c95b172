"""The cancellation-watcher: finishes cancellations and detects dead runners.

Cancellation: it follows every run event (``flowrun.events.>``, an ordered
consumer rebuilt after a reconnect). When a run becomes Cancelling it asks
the runner holding the run (``runner.kill.<name>``) to stop its process tree;
that runner then reports Cancelled once the process is gone. If no runner
answers, or the runner has no such process, the run is Cancelled with a
message saying cancellation cannot be guaranteed.

Crash detection: runners heartbeat into ``runner_heartbeats`` with a TTL of
two intervals. When an entry expires (a KV watch sees the expiry marker), or
a periodic sweep finds an active run whose runner has no live heartbeat, the
runner's runs are settled: Pending ones go back to Scheduled, so another
runner takes them; Running or Paused ones become Crashed with a message
naming the runner; Cancelling ones become Cancelled.

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
from shared import names
from shared.bootstrap import bootstrap
from shared.clock import Clock, SystemClock
from shared.codec import decode, decode_event, decode_reply, encode
from shared.connection import connect
from shared.errors import SluiceError, StackUnavailable
from shared.messages import FlowRunDeleted, KillReply, KillRun, ProposedState, RunnerStatus
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

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

    async def _start(self, stack: AsyncExitStack) -> None:
        nc = await connect(self.settings, name="sluice-cancellation-watcher")
        stack.push_async_callback(nc.close)
        await bootstrap(nc.jetstream(), self.settings)
        self.client = Client(self.settings, nc=nc)
        tg = await stack.enter_async_context(anyio.create_task_group())
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
                        f"{names.EVENTS_PREFIX}.>",
                        stream=names.EVENTS_STREAM,
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
                            event = decode_event(msg.data)
                        except msgspec.DecodeError:
                            continue
                        run = event.flow_run
                        if isinstance(event, FlowRunDeleted):
                            continue  # only runs not under way are deleted
                        if run.state.type is StateType.CANCELLING:
                            work.start_soon(self._cancel, run)
                finally:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                # A Cancelling run whose event we may have missed meanwhile:
                work.start_soon(self._settle_cancelling)

    async def _settle_cancelling(self) -> None:
        with contextlib.suppress(SluiceError):
            page = await self.client.list_flow_runs(states=["CANCELLING"], limit=1000)
            for run in page.flow_runs:
                await self._cancel(run)

    async def _cancel(self, run: FlowRun) -> None:
        """Have the run's process stopped; Cancelled follows from its runner, or from us."""
        try:
            if run.runner and run.runner in self._alive:
                try:
                    reply = await self.client.nc.request(
                        names.runner_kill_subject(run.runner),
                        encode(
                            KillRun(id=run.id, attempt=run.attempt, grace_seconds=self.kill_grace)
                        ),
                        timeout=self.kill_grace + 5,
                    )
                    if decode_reply(reply.data, KillReply).found:
                        return  # the runner reports Cancelled when the process is gone
                except (nats.errors.Error, TimeoutError, SluiceError) as exc:
                    log.warning("runner %s did not kill run %s: %s", run.runner, run.id, exc)
            current = await self.client.read_flow_run(run.id)
            if current.state.type is not StateType.CANCELLING:
                return
            why = (
                "the run had not started a process"
                if current.runner is None
                else f"runner {current.runner} has no process for it"
            )
            await self.client.propose_state(
                run.id,
                ProposedState(
                    type=StateType.CANCELLED,
                    message=f"Cancelled, but {why}; cancellation cannot be guaranteed.",
                ),
            )
        except SluiceError as exc:
            log.warning("could not finish cancelling run %s: %s", run.id, exc.message)

    # --- dead runners ------------------------------------------------------------------
    async def _follow_heartbeats(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        kv = await self.client.nc.jetstream().key_value(names.HEARTBEATS_BUCKET)
        started = False
        async with anyio.create_task_group() as work:
            while True:
                reconnects = self.client.nc.stats["reconnects"]
                watcher = await kv.watchall()
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
        while True:
            await anyio.sleep(self.sweep_seconds)
            with contextlib.suppress(StackUnavailable):
                await self.sweep()

    async def sweep(self) -> None:
        """Settle active runs whose runner has no live heartbeat (missed expiries)."""
        grace = timedelta(seconds=2 * self.settings.heartbeat_interval)
        page = await self.client.list_flow_runs(states=ACTIVE, limit=1000)
        for run in page.flow_runs:
            if run.runner is None or run.runner in self._alive:
                continue
            if self.clock.now() - run.state.timestamp < grace:
                continue  # claimed moments ago: its first heartbeat may still come
            await self._settle(run, run.runner, None)

    async def _runner_lost(self, runner: str, last: RunnerStatus | None) -> None:
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
        seen = f" (last heartbeat {last.at.isoformat(timespec='seconds')})" if last else ""
        gone = f"runner {runner} stopped heartbeating{seen}"
        if run.state.type is StateType.PENDING:
            state = ProposedState(
                type=StateType.SCHEDULED,
                message=f"{gone} before starting the run; offered to another runner",
            )
        elif run.state.type is StateType.CANCELLING:
            state = ProposedState(
                type=StateType.CANCELLED,
                message=f"Cancelled, but {gone}; cancellation cannot be guaranteed.",
            )
        elif run.state.type in (StateType.RUNNING, StateType.PAUSED):
            state = ProposedState(
                type=StateType.CRASHED, message=f"Crashed: {gone}; its process is presumed lost."
            )
        else:
            return
        try:
            reply = await self.client.propose_state(
                run.id, state, attempt=run.attempt, release=state.type is StateType.SCHEDULED
            )
            log.warning("run %s: %s -> %s", run.id, gone, reply.status.value)
        except SluiceError as exc:
            log.warning("could not settle run %s of lost runner %s: %s", run.id, runner, exc)
