"""The scheduler service: owns time. Schedules become runs; due runs are offered.

``Scheduler`` is an async context manager. Entering it connects to NATS,
bootstraps streams and buckets, rebuilds what it knows from ``flowrun.list``
while following the ``flow_runs`` stream (``$KV.flow_runs.>``), loads every
deployment from the ``deployments`` bucket (and keeps watching it), and serves
``deployment.backfill`` in the ``sluice-scheduler`` queue group; it returns
once all of that is running. Leaving it stops taking requests, lets
in-flight ones finish within ``grace`` seconds, then cancels the rest.

It never writes state itself and never imports user code: runs are created
with ``flowrun.create`` (deterministic idempotency keys), removed or skipped
with ``flowrun.cancel`` (Cancelled is the honest record), marked Late with
``flowrun.state.propose``; due runs are offered on ``FLOWRUN_DISPATCH`` with
the orchestrator's message ids. Any number of schedulers may run at once:
they do the same work twice, never create a run twice.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from typing import Self

import anyio
from nats.aio.msg import Msg

from engine.client import Client
from services._rpc import RequestServer
from services._service import Service
from shared import names, runlog, telemetry
from shared.bootstrap import bootstrap
from shared.clock import Clock, SystemClock, utc
from shared.codec import decode_request
from shared.connection import close, connect
from shared.errors import MalformedRequest, SluiceError
from shared.messages import BackfillDeployment, BackfilledRun, BackfillReply
from shared.models import Deployment, FlowRun
from shared.settings import Settings

from ._book import Book
from ._dispatch import Dispatcher
from ._follow import DeploymentFeed, RunFeed
from ._materialize import Schedules
from ._slots import iter_slots, schedule_hash
from ._timers import Timers
from ._triggers import Triggers
from ._view import DeploymentView
from ._work import Work

__all__ = ["Scheduler"]

log = logging.getLogger("sluice.scheduler")

#: How often Scheduled runs due soon are listed again, as a safety net for
#: an event the feed missed (the list and event paths are otherwise exact).
RESYNC_SECONDS = 60.0
#: Offers and Late marks in flight at once (each is one pipelined publish or request).
URGENT_CONCURRENCY = 1024
MAX_BACKFILL = 1000


class Scheduler(Service):
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        grace: float = 5.0,
        concurrency: int = 64,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.clock = clock or SystemClock()
        self.grace = grace
        self.concurrency = concurrency
        self._snapshots = 0

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        log.info(
            "scheduler serving %d schedule(s) of %d deployment(s); %d run(s) tracked",
            len(self.schedules.states),
            len(self.view),
            len(self.book),
        )
        return self

    async def _start(self, stack: AsyncExitStack) -> None:
        s = self.settings
        telemetry.setup("sluice-scheduler")  # as OTEL_* say; first call wins
        telemetry.serve_as("sluice-scheduler")  # its own service.name, even in sluice dev
        nc = self.nc = await connect(s, name="sluice-scheduler")
        stack.push_async_callback(close, nc)
        self.js = js = nc.jetstream()
        await bootstrap(js, s)
        self.client = Client(s, nc=nc)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        # Two lanes: offers and Late marks must not queue behind creating runs.
        self.urgent = Work(tg, URGENT_CONCURRENCY)
        self.work = Work(tg, self.concurrency)
        self.timers = Timers(self.clock)
        self.book = Book()
        self.view = DeploymentView()
        self.dispatcher = Dispatcher(
            self.book,
            self.timers,
            self.urgent,
            self.client,
            js,
            self.clock,
            late_after=s.late_after_seconds,
            lead=s.dispatch_lead_seconds,
        )
        self.schedules = Schedules(
            s, self.client, self.book, self.timers, self.view, self.dispatcher, self.clock
        )
        self.dispatcher.schedules = self.schedules
        stack.callback(telemetry.observe("sluice.dispatch.backlog", self.dispatcher.backlog))
        triggers = Triggers(self.client, self.view)

        async def on_event(run: FlowRun) -> None:
            if any(d.triggers for d in self.view.deployments.values()):
                self.urgent.spawn(lambda: triggers.observe(run), f"triggers of run {run.id}")

        self.runs = RunFeed(self.client, self.dispatcher, on_event)
        await tg.start(self.runs.follow)
        self.deployments = DeploymentFeed(nc, self._snapshot, self._changed)
        await tg.start(self.deployments.follow)
        tg.start_soon(self.timers.run, self._fire)
        tg.start_soon(self._resync_forever)
        server = RequestServer(
            nc,
            tg,
            queue=names.SCHEDULER_QUEUE,
            micro=("sluice-scheduler", "schedules and backfills"),
        )
        limit = s.max_request_bytes

        async def backfill(msg: Msg) -> BackfillReply:
            return await self.backfill(
                decode_request(msg.data, BackfillDeployment, max_bytes=limit)
            )

        await server.add(names.DEPLOYMENT_BACKFILL, backfill)

        async def stop() -> None:
            await server.stop(self.grace)
            tg.cancel_scope.cancel()

        stack.push_async_callback(stop)

    # --- deployments ---------------------------------------------------------------------
    async def _snapshot(self, snapshot: dict[str, Deployment]) -> None:
        """All deployments, at start-up or after a watch was rebuilt."""
        first = self._snapshots == 0
        self._snapshots += 1
        for deployment_id in set(self.view.deployments) - set(snapshot):
            self._apply(deployment_id, None, catch_up=False)
        for deployment_id, deployment in snapshot.items():
            if self.view.get(deployment_id) != deployment:
                self._apply(deployment_id, deployment, catch_up=first)
        if first:  # runs of schedules changed or paused while no scheduler ran
            for deployment_id, digests in self.schedules.stale_runs().items():
                self._sweep(deployment_id, digests)

    async def _changed(self, deployment_id: str, deployment: Deployment | None) -> None:
        self._apply(deployment_id, deployment, catch_up=False)

    def _apply(self, deployment_id: str, deployment: Deployment | None, *, catch_up: bool) -> None:
        for affected in sorted(self.view.put(deployment_id, deployment)):
            gone = self.schedules.set_wanted(affected, catch_up=catch_up)
            if gone:
                self._sweep(affected, gone)

    def _sweep(self, deployment_id: str, digests: set[str]) -> None:
        why = self.schedules.why_gone(deployment_id)
        self.work.spawn(
            lambda: self.schedules.sweep(deployment_id, digests, why),
            f"removing upcoming runs of deployment {deployment_id}",
        )

    # --- timers --------------------------------------------------------------------------
    async def _fire(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        if key[0] == "m":
            sid = (key[1], key[2])
            self.work.spawn(lambda: self.schedules.materialize(sid), f"schedule {sid}")
        elif key[0] == "d":
            run_id = key[1]
            self.urgent.spawn(lambda: self.dispatcher.on_due(run_id), f"offering {run_id}")
        elif key[0] == "l":
            run_id = key[1]
            self.urgent.spawn(lambda: self.dispatcher.on_late(run_id), f"late {run_id}")

    async def _resync_forever(self) -> None:
        while True:
            await self.clock.sleep_until(self.clock.now() + timedelta(seconds=RESYNC_SECONDS))
            now = self.clock.now()
            try:
                page = await self.client.list_flow_runs(
                    states=["SCHEDULED"],
                    since=now - timedelta(hours=1),
                    until=now + timedelta(seconds=2 * RESYNC_SECONDS),
                    limit=1000,
                )
            except SluiceError as exc:
                log.warning("resync of upcoming runs failed: %s", exc.message)
                continue
            for run in page.flow_runs:
                self.dispatcher.observe(run)

    # --- backfill ------------------------------------------------------------------------
    async def backfill(self, req: BackfillDeployment) -> BackfillReply:
        """Create the runs of a deployment's active schedules for slots in ``[start, end]``.

        Slots that have a run keep it (same idempotency keys as the schedule
        itself); a slot the scheduler skipped gets a new run. Past runs are
        offered at once, all of them: no catch-up window, no overlap policy.
        Raises MalformedRequest for an empty or inverted range, or too many slots.
        """
        if not req.id and not req.name:
            raise MalformedRequest("give the deployment's name (FLOW/DEPLOYMENT) or id")
        deployment = await self.client.read_deployment(req.name, id=req.id)
        now = self.clock.now()
        start, end = utc(req.start), min(utc(req.end), now) if req.end else now
        if start > end:
            raise MalformedRequest(
                f"start {start.isoformat()} is after end {end.isoformat()} "
                "(the end is at most now: upcoming runs are the scheduler's own work)"
            )
        items = [i for i in deployment.schedules if i.active]
        if not items:
            raise MalformedRequest(f"deployment {deployment.full_name} has no active schedule")
        todo: list[tuple[datetime, str, int]] = []
        for index, item in enumerate(items):
            for slot in iter_slots(item.schedule, start - timedelta(microseconds=1)):
                if slot > end:
                    break
                todo.append((slot, schedule_hash(item), index))
                if len(todo) > MAX_BACKFILL:
                    raise MalformedRequest(
                        f"the range holds more than {MAX_BACKFILL} slots; backfill a shorter one"
                    )
        todo.sort()
        runs = []
        for slot, digest, index in todo:
            run = await self.schedules.ensure(
                deployment.id, digest, items[index], slot, backfill=True
            )
            self.dispatcher.observe(run)
            runs.append(BackfilledRun(slot=slot, flow_run_id=run.id, state=run.state.name))
        log.info("backfilled %d slot(s) of %s", len(runs), deployment.full_name)
        return BackfillReply(
            deployment_id=deployment.id,
            deployment=deployment.full_name,
            start=start,
            end=end,
            runs=runs,
        )

    # --- observing ----------------------------------------------------------------------
    async def settle(self, timeout: float = 30.0) -> None:
        """Return once every event and deployment change published so far is
        applied, no timer is due and no action is running. For tests and
        benchmarks; raises TimeoutError after ``timeout`` seconds."""
        events_stream = runlog.STREAM
        kv_stream = names.kv_stream(names.DEPLOYMENTS_BUCKET)
        quiet = 0
        with anyio.fail_after(timeout):
            while quiet < 3:
                events = (await self.js.stream_info(events_stream)).state.last_seq
                kv = (await self.js.stream_info(kv_stream)).state.last_seq
                earliest = self.timers.earliest()
                calm = (
                    self.runs.applied_seq >= events
                    and self.deployments.revision >= kv
                    and self.work.in_flight == 0
                    and self.urgent.in_flight == 0
                    and not self.timers.firing
                    and (earliest is None or earliest > self.clock.now())
                )
                quiet = quiet + 1 if calm else 0
                await anyio.sleep(0.01)
