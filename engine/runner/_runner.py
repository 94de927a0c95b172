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

Stopping drains: the runner takes no new work, lets the runs in progress
finish for up to ``drain_seconds``, then kills what is left (their runs end
Crashed, saying the runner stopped). Asking to stop again, or with
``now=True``, ends the drain at once.

Deployments made from a flow here (``add_flow``, ``serve``) without a
``queue`` go on a queue of this runner's own (:func:`private_queue`), so no
runner serving a shared queue takes their runs.

This module takes work and claims it; starting and watching a claimed run
is :mod:`engine.runner._supervise`, heartbeats, kill requests and what a
previous instance left behind are :mod:`engine.runner._upkeep`, and the
blocking methods (``add_flow``, ``start``, ``stop`` …) that plain code calls
are :mod:`engine.runner._facade`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from typing import Any

import anyio
import anyio.abc
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from engine.client import Client
from engine.runner._facade import BackgroundRun, _Facade
from engine.runner._fence import Fence
from engine.runner._filters import consumer_filters
from engine.runner._pull import fetch_unless, keep_in_progress, subscribe_when_ready
from engine.runner._serving import _Serving, private_queue
from engine.runner._stopping import _Stopping
from engine.runner._subprocess import FlowRunner, SubprocessFlowRunner
from engine.runner._supervise import _Supervise
from engine.runner._upkeep import _Active, _Upkeep
from shared import telemetry
from shared.clock import Clock, SystemClock
from shared.codec import decode
from shared.dispatch import PROGRESS_SECONDS
from shared.errors import FlowRunNotFound, SluiceError
from shared.messages import Decision, Dispatch, ProposedState
from shared.models import Deployment, FlowRun
from shared.settings import Settings
from shared.states import StateType

__all__ = ["Runner", "private_queue"]

log = logging.getLogger("sluice.runner")

DEFAULT_LIMIT = 5
#: Seconds a stopping runner lets its runs in progress finish before killing them.
#: Compose's ``stop_grace_period`` for a runner must exceed this plus ``kill_grace``.
DEFAULT_DRAIN_SECONDS = 30.0


def _check_name(name: str) -> str:
    if "/" in name or "%" in name:
        raise ValueError(f"a runner name cannot contain '/' or '%': {name!r}")
    return name


class Runner(_Facade, _Serving, _Stopping, _Supervise, _Upkeep):
    """Runs flow runs of the deployments it serves, or of a whole queue.

    ``query_seconds`` is how long one request for work waits on the server
    (work arrives the moment it is published; this only bounds how often an
    idle runner re-asks). ``prefetch_seconds``: an item due within that
    window is taken now and started at its time. ``limit`` caps the runs in
    progress. ``pause_on_shutdown`` pauses the schedules of the deployments
    this runner added when it stops. ``drain_seconds``: how long a stopping
    runner lets its runs in progress finish before it kills them.
    ``code_path`` is where flow code lives on this host (bundled and git-sourced
    deployments run their own code instead); ``install_requirements`` builds an
    environment for such code's requirements.

    Every method comes twice: a blocking one with the plain name
    (``add_flow``, ``start``, ``stop``, ``execute_flow_run`` …) for plain
    code, as in Prefect's examples, and an awaitable one with an ``a``
    prefix (``aadd_flow``, ``astart`` …) for async code. Why not one name
    that is blocking or awaitable depending on whether an event loop runs
    (Prefect's ``sync_compatible``)? A call's meaning would depend on its
    caller: the same line registers a deployment in a script and silently
    does nothing in a coroutine whose result nobody awaits. With two names
    each call does one thing, type checkers see it, and a blocking method
    called inside an event loop raises at once, naming its async twin.
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
        install_requirements: bool = False,
        heartbeat_seconds: float | None = None,
        clock: Clock | None = None,
        drain_seconds: float = DEFAULT_DRAIN_SECONDS,
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
        if drain_seconds < 0:
            raise ValueError(f"drain_seconds must be >= 0, not {drain_seconds}")
        self.drain_seconds = drain_seconds
        self._client: Client | None = None
        self._deployments: dict[str, Deployment] = {}
        self._served: list[str] = []
        self._slots = anyio.CapacityLimiter(self.limit)
        self._active: dict[str, _Active] = {}
        #: Runs claimed and not yet finished (id -> claim attempt), for heartbeats.
        self._held: dict[str, int] = {}
        self._init_code(install_requirements)
        self._fence = Fence()  # when each held run's body must have stopped
        self._doomed: set[str] = set()  # held runs cancelled before their process started
        self._in_hand: set[str] = set()  # runs whose dispatch item we are taking now
        self._stop = anyio.Event()
        self._hurry = anyio.Event()
        self._idle = anyio.Event()
        self._started = False
        self._draining = False
        self._shutting_down = False
        #: Dispatch items being taken (claimed, prefetched or run), for the drain.
        self._taking = 0
        #: The started runner's event loop, for calls from other threads.
        self._token: Any = None
        self._background: list[BackgroundRun] = []

    # --- running --------------------------------------------------------------------
    async def astart(
        self,
        run_once: bool = False,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take and run work until :meth:`astop` is called or the task is cancelled.

        With ``run_once``, take what is waiting now (up to ``limit``), run it to
        the end, and return. Once stopped, the runner takes no new work and
        lets its runs in progress finish for up to ``drain_seconds`` (a second
        stop, or ``astop(now=True)``, cuts that short). Then it kills the
        processes of runs still in progress (their runs end Crashed, saying
        the runner stopped), so no process outlives it, and pauses its
        deployments' schedules if ``pause_on_shutdown``. Cancelling the task
        skips the drain. Raises ValueError when there is nothing to serve.
        """
        if not self._served and self.queue is None:
            raise ValueError("nothing to serve: add a deployment or flow, or give queue=")
        client = await self._connected()
        self._started = True
        self._stop, self._hurry = anyio.Event(), anyio.Event()
        self._draining = self._shutting_down = False
        self._token = anyio.lowlevel.current_token()
        try:
            async with contextlib.AsyncExitStack() as infra:
                if hasattr(self.flow_runner, "__aenter__"):  # e.g. a fork server to start
                    await infra.enter_async_context(self.flow_runner)  # type: ignore[arg-type]
                async with self._leased(client), anyio.create_task_group() as beats:
                    await beats.start(self._serve_kills, client)
                    async with anyio.create_task_group() as runs:
                        await self._reconcile(client)
                        subs = [
                            await subscribe_when_ready(client, filters, self.name)
                            for filters in self._consumers()
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
                            await self._drain()
                            await self._shutdown(runs)
                    beats.cancel_scope.cancel()
        finally:
            self._started = False
            with anyio.CancelScope(shield=True):
                await self._close()

    # --- consuming dispatch items -------------------------------------------------------
    def _consumers(self) -> list[list[str]]:
        return consumer_filters(self.queue, self._served, self._deployments)

    async def _pull(self, sub: Any, runs: anyio.abc.TaskGroup) -> None:
        """Ask for one item per free slot, forever; a full runner asks for nothing.

        A pull waiting on the server dies with the server, silently: after a
        reconnect the pull is asked again at once instead of waiting out its
        ``query_seconds``.
        """
        client = await self._connected()
        while True:
            token = object()
            await self._slots.acquire_on_behalf_of(token)
            reconnected = client.reconnected
            msgs, failed = await fetch_unless(sub, self.query_seconds, reconnected)
            if not msgs:
                self._slots.release_on_behalf_of(token)
                if failed is not None:
                    log.warning("runner %s: fetching work failed (%s); retrying", self.name, failed)
                    with anyio.move_on_after(1.0):
                        await reconnected.wait()  # back sooner if the connection is
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
        self._taking += 1
        in_hand: str | None = None
        try:
            client = await self._connected()
            try:
                item = decode(msg.data, Dispatch)
            except msgspec.DecodeError as exc:
                log.error("runner %s: dropping an undecodable dispatch item: %s", self.name, exc)
                await msg.term()
                return
            if item.flow_run_id in self._in_hand:
                # The run again while we take it: through our other consumer,
                # or this very item redelivered (its in_progress lost across a
                # reconnect or a consumer's new leader). The take in hand
                # decides: settle this copy only once our claim holds. Acking
                # it earlier lost the offer when that claim then failed, since
                # the take's own nak came after the ack.
                held = self._held.get(item.flow_run_id)
                await (msg.ack() if held == item.attempt + 1 else msg.nak(delay=1.0))
                return
            in_hand = item.flow_run_id
            self._in_hand.add(in_hand)
            early = (item.scheduled_time - self.clock.now()).total_seconds()
            if early > self.prefetch_seconds:
                await msg.nak(delay=early - self.prefetch_seconds)
                return
            while early > 0:  # prefetched: hold the slot and the item, start on time
                if self._draining:  # stopping: not ours to start any more
                    await msg.nak()
                    return
                await msg.in_progress()
                with anyio.move_on_after(PROGRESS_SECONDS):
                    await self.clock.sleep_until(item.scheduled_time)
                early = (item.scheduled_time - self.clock.now()).total_seconds()
            if (held := self._held.get(item.flow_run_id)) is not None:
                # The same item through a second consumer of ours (a queue and a
                # deployment both served): the run is already ours and running.
                # A newer offer (our claim was released) waits until we let go.
                await (msg.ack() if held == item.attempt + 1 else msg.nak(delay=1.0))
                return
            parent = telemetry.context_from_headers(msg.headers)
            with telemetry.runner_span(msg.subject, item.flow_run_id, parent):
                # The ack wait is short (shared.dispatch.ACK_WAIT): keep the item
                # while the claim is being made, so only a stopped runner loses it.
                claimed = await self._claim_keeping(client, item, msg)
                if claimed is not None:
                    await self._run(client, *claimed)
        except SluiceError as exc:
            log.warning("runner %s: could not take a run: %s", self.name, exc.message)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        finally:
            self._taking -= 1
            if in_hand is not None:
                self._in_hand.discard(in_hand)
            self._slots.release_on_behalf_of(token)
            self._note_idle()

    async def _claim_keeping(
        self, client: Client, item: Dispatch, msg: Msg
    ) -> tuple[FlowRun, Deployment | None] | None:
        """:meth:`_claim`, telling JetStream meanwhile that ``msg`` is in progress.

        A SluiceError of the claim (the orchestrators not back yet after a
        NATS restart, say) is raised as itself, not in a task group's wrapping,
        so the caller puts the item back instead of the runner stopping.
        """
        failed: SluiceError | None = None
        claimed = None
        async with anyio.create_task_group() as keep:
            keep.start_soon(keep_in_progress, msg)
            try:
                claimed = await self._claim(client, item.flow_run_id, item.attempt, msg)
            except SluiceError as exc:
                failed = exc
            keep.cancel_scope.cancel()
        if failed is not None:
            raise failed
        return claimed

    async def _claim(
        self, client: Client, run_id: str, attempt: int, msg: Msg | None = None
    ) -> tuple[FlowRun, Deployment | None] | None:
        """Propose PENDING; None if the run is not ours, else the run as our claim
        left it and the deployment the orchestrator sent with it (if it did)."""
        if (sent := await self._may_claim(run_id, msg)) is None:
            return None
        try:
            reply = await client.propose_state(
                run_id,
                ProposedState(type=StateType.PENDING, message=f"claimed by runner {self.name}"),
                runner=self.name,
                attempt=attempt,
                transition_id=f"claim:{self.name}:{run_id}:{attempt}",
            )
        except FlowRunNotFound:
            # Deleted after it was offered (flowrun.delete): the item can never
            # be run, so it is settled rather than offered again forever.
            if msg is not None:
                await msg.ack()
            log.info("runner %s: run %s was deleted; dropping its offer", self.name, run_id)
            return None
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
        self._fence.claimed(run_id, sent, reply.lease_seconds)
        # An orchestrator that does not send them: read them.
        run = reply.flow_run or await client.read_flow_run(run_id)
        return run, reply.deployment
