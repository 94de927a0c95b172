"""Publishing what the orchestrator decided: run events and dispatch work items.

Both go to JetStream with a ``Nats-Msg-Id`` derived from the run and its
revision (or claim attempt), so publishing the same fact twice — a retry, or
recovery after a crash — stores it once within JetStream's duplicate window,
and consumers can de-duplicate beyond it by ``revision``. The dispatch item
and the event of one write are sent together and their acks awaited
together: one round trip, not two.

With tracing on, a dispatch item is sent inside a producer span and carries
the W3C trace context in its headers (``traceparent``), so the runner that
takes it continues the trace of the request that made the run due.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import anyio
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck

from shared import names, telemetry
from shared.codec import decode_event, encode
from shared.dispatch import MSG_ID, dispatch_item, dispatch_message, run_trace
from shared.messages import FlowRunCreated, FlowRunDeleted, FlowRunStateChanged, RunnerStatus
from shared.models import FlowRun
from shared.states import State, StateType

from ._slots import ttl_seconds

ACK_TIMEOUT = 5.0


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
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def announce(
        self,
        run: FlowRun,
        revision: int,
        *,
        now: datetime,
        created: bool = False,
        from_state: State | None = None,
        transition_id: str | None = None,
    ) -> None:
        """Publish the event of a stored write, and the run's dispatch item if it is due.

        Returns once JetStream acknowledged both. Raises TimeoutError when no
        ack came within ACK_TIMEOUT, or a nats error; either way the write
        itself stands and the event will be published by a later retry or by
        recovery.
        """
        pending: list[asyncio.Future[PubAck]] = []
        if is_due(run, now):
            pending.append(await self._send_dispatch(run))
        event: FlowRunCreated | FlowRunStateChanged
        if created:
            event = FlowRunCreated(flow_run=run, revision=revision, occurred=run.created)
        else:
            event = FlowRunStateChanged(
                flow_run=run,
                revision=revision,
                occurred=run.updated,
                from_state=from_state,
                transition_id=transition_id,
            )
        pending.append(
            await self._js.publish_async(
                names.events_subject(run.id),
                encode(event),
                stream=names.EVENTS_STREAM,
                headers={MSG_ID: f"{run.id}:{revision}"},
            )
        )
        with anyio.fail_after(ACK_TIMEOUT):
            for future in pending:
                await future

    async def announce_deleted(
        self, run: FlowRun, revision: int, *, now: datetime, reason: str | None = None
    ) -> None:
        """Publish the event of a stored delete marker at ``revision``; ``run`` is
        the run as it was. Raises as :meth:`announce` does."""
        event = FlowRunDeleted(flow_run=run, revision=revision, occurred=now, reason=reason)
        with anyio.fail_after(ACK_TIMEOUT):
            await self._js.publish(
                names.events_subject(run.id),
                encode(event),
                stream=names.EVENTS_STREAM,
                headers={MSG_ID: f"{run.id}:{revision}"},
            )

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

    async def last_event_revision(self, run_id: str) -> int:
        """The revision carried by the newest event of a run (0: none)."""
        try:
            msg = await self._js.get_last_msg(names.EVENTS_STREAM, names.events_subject(run_id))
        except nats.js.errors.NotFoundError:
            return 0
        return decode_event(msg.data or b"").revision

    async def ensure_deleted_announced(self, run_id: str, revision: int, now: datetime) -> bool:
        """Publish the deletion event of a delete marker at ``revision`` if it is missing.

        The run as it was comes from its newest event; a run with no event at
        all was never announced, so there is nothing to take back. Returns
        True if an event had to be published.
        """
        try:
            msg = await self._js.get_last_msg(names.EVENTS_STREAM, names.events_subject(run_id))
        except nats.js.errors.NotFoundError:
            return False
        last = decode_event(msg.data or b"")
        if last.revision >= revision:
            return False
        await self.announce_deleted(last.flow_run, revision, now=now)
        return True

    async def ensure_announced(self, run: FlowRun, revision: int, now: datetime) -> bool:
        """Publish the event (and dispatch) of a stored write if they are missing.

        For the paths that answer from what is already stored — a repeated
        idempotency key, a replayed transition id, start-up recovery — where
        the first attempt may have died between the KV write and its event.
        Returns True if an event had to be published.
        """
        if await self.last_event_revision(run.id) >= revision:
            if is_due(run, now):  # re-offer; a second claim is refused anyway
                with anyio.fail_after(ACK_TIMEOUT):
                    await (await self._send_dispatch(run))
            return False
        await self.announce(run, revision, now=now, created=run.created == run.updated)
        return True
