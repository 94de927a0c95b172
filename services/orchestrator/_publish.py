"""Publishing what the orchestrator decided: dispatch work items.

A run's events need no publishing: each write of ``flow_runs`` is one
(``shared.runlog``). What remains is the work item of a run that is due. It
goes to JetStream with a ``Nats-Msg-Id`` derived from the run and its claim
attempt, so offering the same run twice — a retry, or recovery after a crash
— stores it once within JetStream's duplicate window (and a second claim is
refused anyway).

With tracing on, a dispatch item is sent inside a producer span and carries
the W3C trace context in its headers (``traceparent``), so the runner that
takes it continues the trace of the request that made the run due.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import anyio
from nats.js import JetStreamContext
from nats.js.api import PubAck

from shared import names, telemetry
from shared.codec import encode
from shared.dispatch import dispatch_item, dispatch_message, run_trace
from shared.messages import RunnerStatus
from shared.models import FlowRun
from shared.states import StateType

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

    async def offer(self, run: FlowRun, now: datetime) -> bool:
        """Send the run's dispatch item if it is due; True if it was.

        Called after every write, and again for a write answered from what is
        stored (a repeated idempotency key, a replayed transition, recovery),
        whose first attempt may have died before its item was sent. Returns
        once JetStream acknowledged it. Raises TimeoutError when no ack came
        within ACK_TIMEOUT, or a nats error; either way the write itself
        stands, and the item is sent again by a later retry or by recovery.
        """
        if not is_due(run, now):
            return False
        with anyio.fail_after(ACK_TIMEOUT):
            await (await self._send_dispatch(run))
        return True

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
