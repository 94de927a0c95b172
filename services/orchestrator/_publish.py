"""Publishing what the orchestrator decided: dispatch work items.

A run's events need no publishing: each write of ``flow_runs`` is one
(``shared.runlog``). What remains is the work item of a run that is due. It
goes to JetStream with a ``Nats-Msg-Id`` derived from the run and its claim
attempt, so offering the same run twice — a retry, or recovery after a crash
— stores it once within JetStream's duplicate window (and a second claim is
refused anyway).

The run's write is the one durable write a request waits for. Its dispatch
item is sent by the publisher's own task right after the reply, and checked
in the background: :meth:`Publisher.run` sends again an item that JetStream
did not store, for up to ``retry_for`` seconds. An item lost with the
orchestrator itself is offered again by ``_recovery`` at the next start or
reconnect, as one lost between the two writes always was.

With tracing on, a dispatch item is sent inside a producer span and carries
the W3C trace context in its headers (``traceparent``), so the runner that
takes it continues the trace of the request that made the run due.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import NamedTuple

import anyio
import anyio.lowlevel
import nats.errors
from anyio.abc import TaskStatus
from nats.js import JetStreamContext
from nats.js.api import PubAck

from shared import names, telemetry
from shared.codec import encode
from shared.dispatch import dispatch_item, dispatch_message, run_trace
from shared.messages import RunnerStatus
from shared.models import FlowRun
from shared.states import StateType

from ._slots import ttl_seconds

log = logging.getLogger("sluice.orchestrator")

#: How long an item's acknowledgement may take before it is sent again.
ACK_TIMEOUT = 5.0
LATE = f"no acknowledgement within {ACK_TIMEOUT:g}s"
#: Pauses between sends of an item JetStream did not store.
RETRY_FIRST_PAUSE = 0.1
RETRY_MOST_PAUSE = 5.0


class _Sent(NamedTuple):
    run: FlowRun
    deadline: float  # monotonic: the ack is late after it
    give_up: float  # monotonic: no send after it


def is_due(run: FlowRun, now: datetime) -> bool:
    """A run a runner should start now: Scheduled, due, backed by a deployment,
    not executed by its creator (agentless), and not still claimed (an owner
    retrying in its own process keeps its claim while it waits)."""
    return (
        run.state.type is StateType.SCHEDULED
        and run.deployment_id is not None
        and not run.agentless
        and run.runner is None
        and run.expected_start_time <= now
    )


class Publisher:
    """Offers due runs to runners. :meth:`run` (a task of the service) sends
    what was offered and sees it stored; nothing is sent without it."""

    def __init__(self, js: JetStreamContext, *, retry_for: float = 30.0) -> None:
        self._js = js
        self._retry_for = retry_for
        self._offered: list[FlowRun] = []
        self._more = anyio.Event()
        # Sent and not acknowledged yet, oldest first (dicts keep insertion order).
        self._unacked: dict[asyncio.Future[PubAck], _Sent] = {}
        self._failed: list[tuple[_Sent, str]] = []
        self._wake = anyio.Event()
        self._retrying = 0
        self._settled = anyio.Event()
        self._settled.set()

    async def offer(self, run: FlowRun, now: datetime) -> bool:
        """Offer the run to runners if it is due; True if it is.

        Called after every write, and again for a write answered from what is
        stored (a repeated idempotency key, a replayed transition, recovery),
        whose first attempt may have died before its item was sent. Returns at
        once: the item is sent by :meth:`run` on the event loop's next turn,
        after the replies written in this one (a create is answered when the
        run is stored, not when its item is).
        """
        if not is_due(run, now):
            return False
        self._offered.append(run)
        self._more.set()
        if self._settled.is_set():
            self._settled = anyio.Event()
        return True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send what is offered, and send again, each from a task of its own,
        the items JetStream refused or did not acknowledge within ACK_TIMEOUT."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._send_offered)
            task_status.started()
            while True:
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                self._wake = anyio.Event()
                now = time.monotonic()
                for ack, item in list(self._unacked.items()):
                    if item.deadline > now:
                        break  # the rest were sent later
                    del self._unacked[ack]
                    ack.cancel()  # nats-py forgets it and frees its slot
                    self._failed.append((item, LATE))
                failed, self._failed = self._failed, []
                for item, error in failed:
                    self._retrying += 1
                    tg.start_soon(self._send_again, item, error)
                self._check_settled()

    async def _send_offered(self) -> None:
        while True:
            await self._more.wait()
            # One more turn of the loop first: the replies written in this turn
            # go out before the items are built (~30 µs each, on a create's path).
            await anyio.lowlevel.checkpoint()
            self._more = anyio.Event()
            offered, self._offered = self._offered, []
            for run in offered:
                sent = time.monotonic()
                item = _Sent(run, sent + ACK_TIMEOUT, sent + self._retry_for)
                try:
                    ack = await self._send_dispatch(run)
                except nats.errors.Error as exc:  # closed, or too many unacknowledged
                    self._failed.append((item, repr(exc)))
                    self._wake.set()
                    continue
                self._unacked[ack] = item
                ack.add_done_callback(self._acknowledged)
            self._check_settled()

    def _acknowledged(self, ack: asyncio.Future[PubAck]) -> None:
        # A done-callback rather than a task awaiting each ack: this runs for every create.
        item = self._unacked.pop(ack, None)
        if item is None:
            return  # given up on already (late), and sent again
        error = _why_not_stored(ack)
        if error is not None:
            self._failed.append((item, error))
            self._wake.set()
        else:
            self._check_settled()

    async def _send_again(self, item: _Sent, error: str) -> None:
        try:
            pause = RETRY_FIRST_PAUSE
            while True:
                if time.monotonic() + pause > item.give_up:
                    log.error(
                        "the dispatch item of run %s was not stored (%s); the run stays "
                        "Scheduled until it is offered again (at the orchestrator's next "
                        "start or reconnect)",
                        item.run.id,
                        error,
                    )
                    return
                log.warning(
                    "the dispatch item of run %s was not stored (%s); sending it again in %.1fs",
                    item.run.id,
                    error,
                    pause,
                )
                await anyio.sleep(pause)
                pause = min(pause * 2, RETRY_MOST_PAUSE)
                try:
                    ack = await self._send_dispatch(item.run)
                except nats.errors.Error as exc:
                    error = repr(exc)
                    continue
                with anyio.move_on_after(ACK_TIMEOUT):
                    await asyncio.wait([ack])  # waits without cancelling nats-py's future
                if not ack.done():
                    ack.cancel()
                    error = LATE
                elif (refused := _why_not_stored(ack)) is not None:
                    error = refused
                else:
                    return
        finally:
            self._retrying -= 1
            self._check_settled()

    def _check_settled(self) -> None:
        if not (self._offered or self._unacked or self._failed or self._retrying):
            self._settled.set()

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every item offered so far to be
        stored (or given up); True if none is left. For a clean shutdown."""
        with anyio.move_on_after(timeout):
            await self._settled.wait()
        return self._settled.is_set()

    async def _send_dispatch(self, run: FlowRun) -> asyncio.Future[PubAck]:
        subject, payload, headers = dispatch_message(dispatch_item(run))
        if not telemetry.enabled():
            return await self._js.publish_async(
                subject, payload, stream=names.DISPATCH_STREAM, headers=headers
            )
        with telemetry.publish_span(
            subject,
            template=telemetry.DISPATCH_TEMPLATE,
            attributes={"sluice.flow_run.id": run.id},
            context=telemetry.context_from_headers(run_trace(run)),  # the creator's trace
        ) as trace_headers:
            return await self._js.publish_async(
                subject,
                payload,
                stream=names.DISPATCH_STREAM,
                headers={**headers, **(trace_headers or {})},
            )

    async def heartbeat(self, status: RunnerStatus, lease: float) -> None:
        """Store a runner's heartbeat; it expires unless the next one comes within ``lease``."""
        await self._js.publish(
            f"$KV.{names.HEARTBEATS_BUCKET}.{status.runner}",
            encode(status),
            msg_ttl=ttl_seconds(lease),
        )


def _why_not_stored(ack: asyncio.Future[PubAck]) -> str | None:
    """None if JetStream stored the item whose ``ack`` is done; else why not."""
    if ack.cancelled():
        return "the connection closed before it was acknowledged"
    refused = ack.exception()
    return repr(refused) if refused is not None else None
