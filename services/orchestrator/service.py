"""The state-orchestration service: the only writer of flow-run state.

``Orchestrator`` is an async context manager. Entering it connects to NATS,
bootstraps streams and buckets, finishes work a crashed predecessor left
(``_recovery``), starts the read model, and subscribes every handler in the
``sluice-orchestrator`` queue group; it returns only once it serves. Leaving
it stops taking requests, lets in-flight ones finish within ``grace``
seconds, then cancels what remains and closes the connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import anyio
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services._rpc import RequestServer
from services._service import Service
from shared import names, telemetry
from shared.bootstrap import bootstrap, leader_kv
from shared.clock import Clock, SystemClock, utc
from shared.codec import decode_request
from shared.connection import close, connect
from shared.errors import Conflict, FlowRunNotFound
from shared.messages import (
    CancelFlowRun,
    CreateFlowRun,
    DeleteFlowRun,
    DeploymentRef,
    DispatchConsumer,
    FlowRunPage,
    FlowRunRef,
    Heartbeat,
    ListDeployments,
    ListFlowRuns,
    ProposeState,
    RegisterDeployment,
)
from shared.models import FlowRun
from shared.settings import Settings

from ._consumers import Consumers
from ._deployment_cache import DeploymentCache
from ._deployments import Deployments, decode_register
from ._keys import Keys, has_legacy_claims
from ._publish import Publisher
from ._readmodel import ReadModel
from ._recovery import recover
from ._runs import Runs
from ._slot_gauge import SlotGauge
from ._slots import Slots
from ._store import DeploymentStore, IdempotencyStore, RunStore

log = logging.getLogger("sluice.orchestrator")

#: States of a run that a cancellation still has to stop.
ACTIVE_OR_WAITING = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]

R = TypeVar("R")


class Orchestrator(Service):
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        read_model_path: Path | None = None,
        grace: float = 10.0,
        concurrency: int = 256,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.read_model_path = read_model_path or settings.home / "orchestrator" / "runs.sqlite"
        self.grace = grace
        self.concurrency = concurrency
        super().__init__()
        self.nc: NATS | None = None

    async def _start(self, stack: AsyncExitStack) -> None:
        s = self.settings
        telemetry.setup("sluice-orchestrator")  # as OTEL_* say; first call wins
        telemetry.serve_as("sluice-orchestrator")  # its own service.name, even in sluice dev
        reconnects, self._reconnects = anyio.create_memory_object_stream[None](1)
        stack.callback(reconnects.close)
        stack.callback(self._reconnects.close)

        async def on_reconnect() -> None:
            with contextlib.suppress(anyio.WouldBlock, anyio.ClosedResourceError):
                reconnects.send_nowait(None)  # one pending signal is enough

        nc = self.nc = await connect(s, name="sluice-orchestrator", on_reconnect=on_reconnect)
        stack.push_async_callback(close, nc)
        js = nc.jetstream()
        await bootstrap(js, s)

        publisher = Publisher(js, retry_for=s.outage_grace)
        deployments_kv = await leader_kv(js, names.DEPLOYMENTS_BUCKET)
        deployment_store = DeploymentStore(deployments_kv, js)
        self.deployment_cache = cache = DeploymentCache(nc, deployments_kv)
        self.deployments = deployments = Deployments(deployment_store, self.clock, cache)
        self.read_model = read_model = ReadModel(self.read_model_path, nc)
        await read_model.open()
        stack.push_async_callback(read_model.close)
        run_store = RunStore(
            await leader_kv(js, names.FLOW_RUNS_BUCKET), nc, on_write=read_model.note
        )
        claims = IdempotencyStore(await leader_kv(js, names.IDEMPOTENCY_BUCKET))
        runs = Runs(
            run_store,
            Keys(run_store, claims, legacy=await has_legacy_claims(js)),
            deployments,
            publisher,
            self.clock,
            slots := Slots(js),
            slot_lease=s.slot_lease,
        )

        await recover(js, publisher, self.clock)

        tg = await stack.enter_async_context(anyio.create_task_group())
        await tg.start(publisher.run)
        await tg.start(read_model.follow)
        tg.start_soon(self._recover_after_reconnects, js, publisher)
        tg.start_soon(cache.follow)  # until it has caught up, creates read KV
        gauge = SlotGauge(deployment_store, slots)
        tg.start_soon(gauge.run)
        stack.callback(telemetry.observe("sluice.deployment.slots.in_use", gauge.values))
        server = RequestServer(
            nc,
            tg,
            queue=names.ORCHESTRATOR_QUEUE,
            concurrency=self.concurrency,
            micro=(
                "sluice-orchestrator",
                "flow runs and deployments: the only writer of run state",
            ),
        )

        async def stop() -> None:
            await server.stop(self.grace)
            if not await publisher.settle(self.grace):
                log.warning("shutdown: dispatch items still unacknowledged; recovery offers them")
            tg.cancel_scope.cancel()

        stack.push_async_callback(stop)

        async def list_runs(req: ListFlowRuns) -> FlowRunPage:
            ids = await deployments.ids_for(req.deployment) if req.deployment else None
            if req.since or req.until:
                req = ListFlowRuns(
                    **{
                        **{f: getattr(req, f) for f in req.__struct_fields__},
                        "since": utc(req.since) if req.since else None,
                        "until": utc(req.until) if req.until else None,
                    }
                )
            await read_model.sync()
            return await read_model.query(req, ids)

        async def cancel(req: CancelFlowRun) -> FlowRun:
            """Cancel a run and, unless ``cascade`` is off, its unfinished descendants."""
            run = await runs.cancel(req)
            if req.cascade:
                await read_model.sync()
                page = await read_model.query(
                    ListFlowRuns(parent_flow_run_id=req.id, states=ACTIVE_OR_WAITING, limit=1000),
                    None,
                )
                for child in page.flow_runs:
                    with contextlib.suppress(Conflict, FlowRunNotFound):
                        await cancel(
                            CancelFlowRun(
                                id=child.id, reason=f"its parent run {run.name} was cancelled"
                            )
                        )
                # The run may have moved on while its children were cancelled
                # (its runner can report Cancelled within milliseconds): the
                # reply carries the state as stored now, not as first written.
                run = await runs.read(FlowRunRef(id=req.id))
            return run

        routes: list[tuple[str, type[Any], Callable[[Any], Awaitable[Any]]]] = [
            (names.FLOWRUN_CREATE, CreateFlowRun, runs.create),
            (names.FLOWRUN_PROPOSE, ProposeState, runs.propose),
            (names.FLOWRUN_RETRY, ProposeState, runs.retry),
            (names.RUNNER_CONSUMER, DispatchConsumer, Consumers(js).ensure),
            (names.FLOWRUN_CANCEL, CancelFlowRun, cancel),
            (names.FLOWRUN_READ, FlowRunRef, runs.read),
            (names.FLOWRUN_LIST, ListFlowRuns, list_runs),
            (names.FLOWRUN_DELETE, DeleteFlowRun, runs.delete),
            (names.RUNNER_HEARTBEAT, Heartbeat, runs.heartbeat),
            (names.DEPLOYMENT_REGISTER, RegisterDeployment, deployments.register),
            (names.DEPLOYMENT_READ, DeploymentRef, deployments.resolve),
            (names.DEPLOYMENT_LIST, ListDeployments, deployments.page),
            (names.DEPLOYMENT_PAUSE, DeploymentRef, lambda r: deployments.set_paused(r, True)),
            (names.DEPLOYMENT_RESUME, DeploymentRef, lambda r: deployments.set_paused(r, False)),
            (names.DEPLOYMENT_DELETE, DeploymentRef, deployments.delete),
        ]
        for subject, type_, fn in routes:
            await server.add(subject, self._decoding(type_, fn))
        log.info("orchestrator serving on %s", s.nats_url)

    async def _recover_after_reconnects(self, js: JetStreamContext, publisher: Publisher) -> None:
        """A write cut off by a NATS outage may lack its dispatch item: look again after each."""
        async for _ in self._reconnects:
            try:
                await recover(js, publisher, self.clock)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("recovery after reconnect failed (%s); will retry on the next", exc)

    def _decoding(
        self, type_: type[Any], fn: Callable[[Any], Awaitable[R]]
    ) -> Callable[[Msg], Awaitable[R]]:
        limit = self.settings.max_request_bytes

        async def handle(msg: Msg) -> R:
            if type_ is RegisterDeployment:  # takes the seeds' dict form of schedules too
                return await fn(decode_register(msg.data, limit))
            return await fn(decode_request(msg.data, type_, max_bytes=limit))

        return handle
