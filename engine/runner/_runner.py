"""The Runner: takes dispatched flow runs and runs each in its own process.

Work is pushed, not polled: due runs are published on
``flowrun.dispatch.<queue>.<deployment_id>`` and a runner pulls from a
durable JetStream consumer shared by every runner serving the same thing, so
each item reaches one runner at a time. A runner asks for an item only while
it has a free slot (``limit``): a full runner takes nothing, and items wait
in the stream — in order — until someone can take them.

Ownership never comes from the JetStream ack. For each item the runner
proposes PENDING with the item's ``attempt``; only an ACCEPT makes the run
its own (two runners racing: exactly one wins). WAIT puts the item back for
later; anything else means the run is not ours, and the runner says why.
Then it starts the run's infrastructure (a flow runner, a subprocess by
default), waits for it, and if the process ended without the engine having
reported a final state, marks the run Crashed with a message that explains
the exit code.

This module takes work and claims it; starting and watching a claimed run
is :mod:`engine.runner._supervise`, and heartbeats, kill requests and what a
previous instance left behind are :mod:`engine.runner._upkeep`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from engine.client import Client
from engine.deployments import RunnerDeployment
from engine.runner._subprocess import FlowRunner, SubprocessFlowRunner
from engine.runner._supervise import _Supervise
from engine.runner._upkeep import _Active, _Upkeep
from shared import names, telemetry
from shared.clock import Clock, SystemClock
from shared.codec import decode
from shared.errors import SluiceError
from shared.messages import Decision, Dispatch, ProposedState
from shared.models import Deployment, FlowRun
from shared.settings import Settings
from shared.states import StateType

if TYPE_CHECKING:
    from engine.flows import Flow

__all__ = ["Runner"]

log = logging.getLogger("sluice.runner")

DEFAULT_LIMIT = 5
#: Seconds an item a runner fetched but did not answer stays with it: how soon
#: the work of a runner that died holding items goes to another one.
ACK_WAIT = 5.0


def _check_name(name: str) -> str:
    if "/" in name or "%" in name:
        raise ValueError(f"a runner name cannot contain '/' or '%': {name!r}")
    return name


class Runner(_Supervise, _Upkeep):
    """Runs flow runs of the deployments it serves, or of a whole queue.

    ``query_seconds`` is how long one request for work waits on the server
    (work arrives the moment it is published; this only bounds how often an
    idle runner re-asks). ``prefetch_seconds``: an item due within that
    window is taken now and started at its time. ``limit`` caps the runs in
    progress. ``pause_on_shutdown`` pauses the schedules of the deployments
    this runner added when it stops.
    """

    def __init__(
        self,
        name: str | None = None,
        query_seconds: float = 10.0,
        prefetch_seconds: float = 10.0,
        limit: int | None = None,
        pause_on_shutdown: bool = True,
        *,
        queue: str | None = None,
        settings: Settings | None = None,
        flow_runner: FlowRunner | None = None,
        kill_grace: float = 10.0,
        code_path: str | None = None,
        heartbeat_seconds: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = _check_name(name or f"runner-{uuid.uuid4().hex[:8]}")
        self.query_seconds = query_seconds
        self.prefetch_seconds = prefetch_seconds
        self.limit = limit or DEFAULT_LIMIT
        self.pause_on_shutdown = pause_on_shutdown
        self.queue = queue
        self.settings = settings or Settings.from_env()
        self.flow_runner: FlowRunner = flow_runner or SubprocessFlowRunner()
        self.kill_grace = kill_grace
        #: Where the flow code lives on this host; overrides deployments' paths.
        self.code_path = code_path
        self.clock: Clock = clock or SystemClock()
        self.heartbeat_seconds = heartbeat_seconds or self.settings.heartbeat_interval
        self._client: Client | None = None
        self._deployments: dict[str, Deployment] = {}
        self._served: list[str] = []
        self._slots = anyio.CapacityLimiter(self.limit)
        self._active: dict[str, _Active] = {}
        #: Runs claimed and not yet finished (id -> claim attempt), for heartbeats.
        self._held: dict[str, int] = {}
        self._stop = anyio.Event()
        self._started = False
        self._shutting_down = False

    # --- what to serve ------------------------------------------------------------
    async def _connected(self) -> Client:
        if self._client is None:
            client = Client(self.settings)
            await client.__aenter__()
            self._client = client
        return self._client

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Client]:
        """The running runner's connection, or a connection for this call only."""
        if self._client is not None:
            yield self._client
            return
        async with Client(self.settings) as client:
            yield client

    async def add_deployment(self, deployment: RunnerDeployment) -> str:
        """Register the deployment with the stack and serve it; returns its id."""
        async with self._session() as client:
            stored = await client.register_deployment(deployment.to_request())
        self._deployments[stored.id] = stored
        if stored.id not in self._served:
            self._served.append(stored.id)
        return stored.id

    async def serve_deployment(self, ref: str) -> str:
        """Serve an already registered deployment (``flow/name``, a bare flow name, or an id)."""
        async with self._session() as client:
            try:
                uuid.UUID(ref)
                stored = await client.read_deployment(id=ref)
            except ValueError:
                stored = await client.read_deployment(ref)
        self._deployments[stored.id] = stored
        if stored.id not in self._served:
            self._served.append(stored.id)
        return stored.id

    async def add_flow(self, flow: Flow[Any, Any], name: str | None = None, **kwargs: Any) -> str:
        """Serve ``flow`` as a deployment (``flow.to_deployment`` arguments)."""
        deployment = RunnerDeployment.from_flow(flow, name or self.name, **kwargs)
        return await self.add_deployment(deployment)

    @property
    def in_progress(self) -> int:
        return len(self._active)

    # --- running --------------------------------------------------------------------
    async def start(
        self,
        run_once: bool = False,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take and run work until :meth:`stop` is called or the task is cancelled.

        With ``run_once``, take what is waiting now (up to ``limit``), run it to
        the end, and return. On the way out the runner stops taking work,
        pauses its deployments' schedules if ``pause_on_shutdown``, and kills
        the processes of runs still in progress (their runs end Crashed,
        saying the runner stopped), so no process outlives it.
        """
        if not self._served and self.queue is None:
            raise ValueError("nothing to serve: add a deployment or flow, or give queue=")
        client = await self._connected()
        self._started = True
        self._stop = anyio.Event()
        try:
            async with contextlib.AsyncExitStack() as infra:
                if hasattr(self.flow_runner, "__aenter__"):  # e.g. a fork server to start
                    await infra.enter_async_context(self.flow_runner)  # type: ignore[arg-type]
                async with anyio.create_task_group() as beats:
                    beats.start_soon(self._heartbeats, client)
                    await beats.start(self._serve_kills, client)
                    async with anyio.create_task_group() as runs:
                        await self._reconcile(client)
                        subs = [
                            await self._subscribe_when_ready(client, f) for f in self._consumers()
                        ]
                        task_status.started()  # taking work from here on
                        if run_once:
                            await self._take_once(subs, runs)
                        else:
                            async with anyio.create_task_group() as pullers:
                                for sub in subs:
                                    pullers.start_soon(self._pull, sub, runs)
                                await self._stop.wait()
                                pullers.cancel_scope.cancel()
                            await self._shutdown(runs)
                    beats.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    async def stop(self) -> None:
        """Ask a started runner to stop. Raises RuntimeError if it never started."""
        if not self._started:
            raise RuntimeError(f"runner {self.name!r} was never started")
        self._stop.set()

    async def execute_flow_run(self, flow_run_id: str) -> FlowRun:
        """Claim one run, run it in its infrastructure, and return it when its process ends."""
        async with self._session() as client:
            run = await client.read_flow_run(flow_run_id)
            async with self._slots:
                claimed = await self._claim(client, run.id, run.attempt)
                if claimed is not None:
                    await self._run(client, *claimed)
            return await client.read_flow_run(flow_run_id)

    # --- consuming dispatch items -------------------------------------------------------
    def _consumers(self) -> list[list[str]]:
        out: list[list[str]] = []
        if self.queue is not None:
            out.append([f"{names.DISPATCH_PREFIX}.{self.queue}.>"])
        if self._served:
            out.append([f"{names.DISPATCH_PREFIX}.*.{d}" for d in sorted(self._served)])
        return out

    async def _subscribe_when_ready(self, client: Client, filters: list[str]) -> Any:
        """Subscribe, waiting for the dispatch stream if the stack is still starting.

        Services may start in any order (compose starts them together); only
        the orchestrator creates streams, so a runner that comes first waits.
        """
        warned = False
        while True:
            try:
                return await self._subscribe(client, filters)
            except nats.js.errors.NotFoundError:
                if not warned:
                    log.warning("runner %s: waiting for the stack to create its streams", self.name)
                    warned = True
                await anyio.sleep(0.5)

    async def _subscribe(self, client: Client, filters: list[str]) -> Any:
        # Every runner serving the same thing shares one durable consumer.
        durable = "runner-" + hashlib.sha256("\n".join(filters).encode()).hexdigest()[:20]
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=-1,
            inactive_threshold=7 * 24 * 3600.0,
            **(
                {"filter_subject": filters[0]}
                if len(filters) == 1
                else {"filter_subjects": filters}
            ),
        )
        js = client.nc.jetstream()
        # Creating a durable with the same config again is a no-op, so every
        # runner may do it; then all of them pull from the one consumer.
        await js.add_consumer(names.DISPATCH_STREAM, config)
        return await js.pull_subscribe_bind(durable=durable, stream=names.DISPATCH_STREAM)

    async def _pull(self, sub: Any, runs: anyio.abc.TaskGroup) -> None:
        """Ask for one item per free slot, forever; a full runner asks for nothing."""
        while True:
            token = object()
            await self._slots.acquire_on_behalf_of(token)
            try:
                msgs = await sub.fetch(1, timeout=self.query_seconds)
            except nats.errors.TimeoutError:
                self._slots.release_on_behalf_of(token)
                continue
            except (nats.errors.Error, OSError) as exc:
                self._slots.release_on_behalf_of(token)
                log.warning("runner %s: fetching work failed (%s); retrying", self.name, exc)
                await anyio.sleep(1.0)
                continue
            runs.start_soon(self._take, msgs[0], token)

    async def _take_once(self, subs: list[Any], runs: anyio.abc.TaskGroup) -> None:
        for sub in subs:
            while self._slots.available_tokens:
                token = object()
                await self._slots.acquire_on_behalf_of(token)
                try:
                    msgs = await sub.fetch(1, timeout=1.0)
                except nats.errors.TimeoutError:
                    self._slots.release_on_behalf_of(token)
                    break
                runs.start_soon(self._take, msgs[0], token)

    async def _take(self, msg: Msg, token: object) -> None:
        try:
            client = await self._connected()
            try:
                item = decode(msg.data, Dispatch)
            except msgspec.DecodeError as exc:
                log.error("runner %s: dropping an undecodable dispatch item: %s", self.name, exc)
                await msg.term()
                return
            early = (item.scheduled_time - self.clock.now()).total_seconds()
            if early > self.prefetch_seconds:
                await msg.nak(delay=early - self.prefetch_seconds)
                return
            while early > 0:  # prefetched: hold the slot and the item, start on time
                await msg.in_progress()
                with anyio.move_on_after(ACK_WAIT / 2):
                    await self.clock.sleep_until(item.scheduled_time)
                early = (item.scheduled_time - self.clock.now()).total_seconds()
            if item.flow_run_id in self._held:
                # The same item through a second consumer of ours (a queue and a
                # deployment both served): the run is already ours and running.
                await msg.ack()
                return
            parent = telemetry.context_from_headers(msg.headers)
            with telemetry.runner_span(msg.subject, item.flow_run_id, parent):
                claimed = await self._claim(client, item.flow_run_id, item.attempt, msg)
                if claimed is not None:
                    await self._run(client, *claimed)
        except SluiceError as exc:
            log.warning("runner %s: could not take a run: %s", self.name, exc.message)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        finally:
            self._slots.release_on_behalf_of(token)

    async def _claim(
        self, client: Client, run_id: str, attempt: int, msg: Msg | None = None
    ) -> tuple[FlowRun, Deployment | None] | None:
        """Propose PENDING; None if the run is not ours, else the run as our claim
        left it and the deployment the orchestrator sent with it (if it did)."""
        reply = await client.propose_state(
            run_id,
            ProposedState(type=StateType.PENDING, message=f"claimed by runner {self.name}"),
            runner=self.name,
            attempt=attempt,
            transition_id=f"claim:{self.name}:{run_id}:{attempt}",
        )
        if reply.status is Decision.WAIT and msg is not None:
            await msg.nak(delay=max(reply.delay_seconds or 1.0, 0.05))
            return None
        if msg is not None:
            await msg.ack()
        if reply.status is not Decision.ACCEPT:
            log.info(
                "runner %s: run %s is not ours (%s: %s)",
                self.name,
                run_id,
                reply.status.value,
                reply.reason,
            )
            return None
        # An orchestrator that does not send them: read them.
        run = reply.flow_run or await client.read_flow_run(run_id)
        return run, reply.deployment

    # --- stopping ---------------------------------------------------------------------
    async def _shutdown(self, runs: anyio.abc.TaskGroup) -> None:
        self._shutting_down = True
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as killers:
                for active in list(self._active.values()):
                    active.stopping = True
                    killers.start_soon(active.process.kill, self.kill_grace)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if self.pause_on_shutdown:
            for deployment_id in self._served:
                with contextlib.suppress(SluiceError):
                    await client.pause_deployment(id=deployment_id)
        await client.__aexit__(None, None, None)
