"""Following the stack: run events into the book, deployment changes into schedules.

Owns two supervised subscriptions, each rebuilt after a reconnect (nats-py's
ordered consumers and KV watchers can go quiet across one):

* the ``flow_runs`` stream (each write a run event, ``shared.runlog``) — an
  ordered consumer from "now" (after a reconnect: from the first write not
  yet applied); right after subscribing, the Scheduled runs
  and the unfinished runs are listed (``flowrun.list``) and the book rebuilt
  from them, then every write is applied in order, so nothing that happened
  in between is lost. The bucket keeps only a run's newest write, so a run
  may move on before its write is delivered: the book needs only the newest,
  and triggers are handed every state since the one last seen, from the
  run's history.
* the ``deployments`` bucket — a watch of every key (``d.<id>`` hold
  deployments; the ``n.`` name index is skipped); the initial values, read up
  to the bucket's last revision when the watch began (the watcher's own
  "done" marker can come early), are a snapshot compared with what was
  known; then each change is applied.

Both remember how far they got (stream sequence / KV revision), so the
service can tell when it has seen everything published so far.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from engine.client import Client
from shared import names, runlog
from shared.codec import decode
from shared.errors import SluiceError
from shared.messages import FlowRunCreated, FlowRunDeleted, FlowRunStateChanged
from shared.models import Deployment, FlowRun
from shared.states import ACTIVE_TYPES

from ._dispatch import Dispatcher

__all__ = ["DeploymentFeed", "RunFeed"]

log = logging.getLogger("sluice.scheduler")

PAGE = 1000
SEEN = 10_000
DEPLOYMENT_KEY = "d."


async def list_all(client: Client, states: list[str]) -> list[FlowRun]:
    """Every run in ``states``, page by page."""
    runs: list[FlowRun] = []
    offset: int | None = 0
    while offset is not None:
        page = await client.list_flow_runs(states=states, limit=PAGE, offset=offset)
        runs.extend(page.flow_runs)
        offset = page.next_offset
    return runs


class RunFeed:
    def __init__(
        self,
        client: Client,
        dispatcher: Dispatcher,
        on_event: Callable[[FlowRun], Awaitable[None]] | None = None,
    ) -> None:
        self.client = client
        self.dispatcher = dispatcher
        self.on_event = on_event
        self.applied_seq = 0
        self.rebuilds = 0
        #: Run id -> the newest revision handed to ``on_event``, for the most
        #: recently active runs (a run forgotten here is handed again the states
        #: since the subscription began: triggers are idempotent, so that only
        #: costs requests).
        self._seen: OrderedDict[str, int] = OrderedDict()

    async def _hand_on(self, event: FlowRunCreated | FlowRunStateChanged, since: int) -> None:
        """Give ``on_event`` the run as each state not yet handed on left it."""
        assert self.on_event is not None
        run_id = event.flow_run.id
        # After the newest state handed on, if we remember the run: states it
        # passed at revisions up to ``since`` whose writes we never received
        # (a newer write of the run replaced them first) are still handed on.
        for each in runlog.transitions(event, after=self._seen.get(run_id, since)):
            assert not isinstance(each, FlowRunDeleted)
            await self.on_event(each.flow_run)
        self._seen[run_id] = event.revision
        self._seen.move_to_end(run_id)
        if len(self._seen) > SEEN:
            self._seen.popitem(last=False)

    async def follow(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        nc = self.client.nc
        js = nc.jetstream()
        started = False
        while True:
            reconnects = nc.stats["reconnects"]
            try:
                # At start-up, from the next event on, exactly: the listing below
                # covers the past. After a reconnect, from the first event not
                # applied: a run that ended while we were away is in no listing
                # of Scheduled and active runs, and triggers must still see it
                # end. (Never past the stream's end: a store that was reset
                # starts its sequences again lower.)
                last = (await js.stream_info(runlog.STREAM)).state.last_seq
                since = min(self.applied_seq, last) if started else last
                sub = await js.subscribe(
                    runlog.SUBJECTS,
                    stream=runlog.STREAM,
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since + 1
                    ),
                    pending_msgs_limit=500_000,
                )
                self.applied_seq = since if started else max(self.applied_seq, last)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cannot follow run events (%s); retrying", exc)
                await anyio.sleep(1.0)
                continue
            try:
                try:
                    runs = await list_all(self.client, ["SCHEDULED"])
                    runs += await list_all(self.client, [t.value for t in ACTIVE_TYPES])
                except SluiceError as exc:
                    log.warning("cannot list runs to rebuild from (%s); retrying", exc.message)
                    await anyio.sleep(1.0)
                    continue
                self.dispatcher.rebuild(runs)
                self.rebuilds += 1
                if not started:
                    started = True
                    task_status.started()
                while nc.stats["reconnects"] == reconnects:
                    try:
                        msg = await sub.next_msg(timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    self.applied_seq = msg.metadata.sequence.stream
                    try:
                        event = runlog.event_of(msg)
                    except msgspec.DecodeError:
                        continue
                    if isinstance(event, FlowRunDeleted):
                        self._seen.pop(event.flow_run_id, None)
                        self.dispatcher.deleted(event.flow_run_id, event.flow_run)
                        continue
                    self.dispatcher.observe(event.flow_run, event.revision)
                    if self.on_event is not None:
                        await self._hand_on(event, since)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()


Snapshot = Callable[[dict[str, Deployment]], Awaitable[None]]
Change = Callable[[str, Deployment | None], Awaitable[None]]


class DeploymentFeed:
    def __init__(self, nc: NATS, on_snapshot: Snapshot, on_change: Change) -> None:
        self.nc = nc
        self.on_snapshot = on_snapshot
        self.on_change = on_change
        self.revision = 0

    async def follow(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        js = self.nc.jetstream()
        kv = await js.key_value(names.DEPLOYMENTS_BUCKET)
        started = False
        while True:
            reconnects = self.nc.stats["reconnects"]
            try:
                # The watcher's "initial values done" marker is not a snapshot:
                # the snapshot is whole once the stream's last revision arrived.
                target = (await js.stream_info(names.kv_stream(names.DEPLOYMENTS_BUCKET))).state
                watcher = await kv.watchall()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cannot watch deployments (%s); retrying", exc)
                await anyio.sleep(1.0)
                continue
            snapshot: dict[str, Deployment] | None = {}
            marker, seen = False, 0
            try:
                while self.nc.stats["reconnects"] == reconnects:
                    try:
                        entry = await watcher.updates(timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    if entry is None:
                        marker = True
                    else:
                        seen = max(seen, entry.revision or 0)
                        self.revision = max(self.revision, seen)
                        await self._take(entry.key, entry.operation, entry.value, snapshot)
                    if snapshot is not None and marker and seen >= target.last_seq:
                        await self.on_snapshot(snapshot)
                        snapshot = None
                        if not started:
                            started = True
                            task_status.started()
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()

    async def _take(
        self,
        key: str,
        operation: str | None,
        value: bytes | None,
        snapshot: dict[str, Deployment] | None,
    ) -> None:
        if not key.startswith(DEPLOYMENT_KEY):
            return  # the name index
        deployment_id = key[len(DEPLOYMENT_KEY) :]
        deployment = None
        if operation not in ("DEL", "PURGE") and value:
            try:
                deployment = decode(value, Deployment)
            except msgspec.DecodeError as exc:
                log.error("skipping undecodable deployment %s: %s", key, exc)
        if snapshot is None:
            await self.on_change(deployment_id, deployment)
        elif deployment is not None:
            snapshot[deployment_id] = deployment
        else:
            snapshot.pop(deployment_id, None)
