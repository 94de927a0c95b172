"""Publishing what the orchestrator decided: run events and dispatch work items.

Both go to JetStream with a ``Nats-Msg-Id`` derived from the run and its
revision (or claim attempt), so publishing the same fact twice — a retry, or
recovery after a crash — stores it once within JetStream's duplicate window,
and consumers can de-duplicate beyond it by ``revision``.
"""

from __future__ import annotations

from datetime import datetime

import nats.js.errors
from nats.js import JetStreamContext

from shared import names
from shared.codec import decode, encode
from shared.messages import Dispatch, Event, FlowRunCreated, FlowRunStateChanged
from shared.models import FlowRun
from shared.states import State, StateType

MSG_ID = "Nats-Msg-Id"


def is_due(run: FlowRun, now: datetime) -> bool:
    """A run a runner should start now: Scheduled, due, and backed by a deployment."""
    return (
        run.state.type is StateType.SCHEDULED
        and run.deployment_id is not None
        and run.expected_start_time <= now
    )


class Publisher:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def created(self, run: FlowRun, revision: int) -> None:
        event = FlowRunCreated(flow_run=run, revision=revision, occurred=run.created)
        await self._publish_event(run.id, revision, encode(event))

    async def changed(
        self,
        run: FlowRun,
        revision: int,
        *,
        from_state: State | None,
        transition_id: str | None = None,
    ) -> None:
        event = FlowRunStateChanged(
            flow_run=run,
            revision=revision,
            occurred=run.updated,
            from_state=from_state,
            transition_id=transition_id,
        )
        await self._publish_event(run.id, revision, encode(event))

    async def _publish_event(self, run_id: str, revision: int, data: bytes) -> None:
        await self._js.publish(
            names.events_subject(run_id),
            data,
            stream=names.EVENTS_STREAM,
            headers={MSG_ID: f"{run_id}:{revision}"},
        )

    async def last_event_revision(self, run_id: str) -> int:
        """The revision carried by the newest event of a run (0: none)."""
        try:
            msg = await self._js.get_last_msg(names.EVENTS_STREAM, names.events_subject(run_id))
        except nats.js.errors.NotFoundError:
            return 0
        return decode(msg.data or b"", Event).revision  # type: ignore[arg-type]

    async def ensure_announced(self, run: FlowRun, revision: int, now: datetime) -> bool:
        """Publish the event (and dispatch) of a stored write if they are missing.

        For the paths that answer from what is already stored — a repeated
        idempotency key, a replayed transition id, start-up recovery — where
        the first attempt may have died between the KV write and its event.
        Returns True if an event had to be published.
        """
        missing = await self.last_event_revision(run.id) < revision
        if missing:
            if run.created == run.updated:
                await self.created(run, revision)
            else:
                await self.changed(run, revision, from_state=None)
        if is_due(run, now):
            await self.dispatch(run)
        return missing

    async def dispatch(self, run: FlowRun) -> None:
        item = Dispatch(
            flow_run_id=run.id,
            deployment_id=run.deployment_id,
            queue=run.queue,
            attempt=run.attempt,
            scheduled_time=run.expected_start_time,
        )
        await self._js.publish(
            names.dispatch_subject(run.queue),
            encode(item),
            stream=names.DISPATCH_STREAM,
            headers={MSG_ID: f"dispatch:{run.id}:{run.attempt}"},
        )
