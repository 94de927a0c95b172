"""Finish what a crashed orchestrator left half done, at start-up.

An orchestrator can die after writing a run to KV (or deleting it) and before
publishing its event or dispatch item. The KV write is the truth, so at start-up we replay
the tail of the ``flow_runs`` stream (from a little before the newest event's
revision) and, for each run whose newest event is older than its KV revision,
publish the missing event; a due Scheduled run is offered to runners again
(de-duplicated by ``Nats-Msg-Id``, and a second claim is refused anyway).
"""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import names
from shared.clock import Clock
from shared.codec import decode, decode_event
from shared.models import FlowRun

from ._publish import Publisher

log = logging.getLogger("sluice.recovery")

#: How far behind the newest event's revision to look; bounds the work and
#: covers writes that were in flight concurrently when the process died.
MARGIN = 2000


async def _newest_event_revision(js: JetStreamContext) -> int:
    info = await js.stream_info(names.EVENTS_STREAM)
    if not info.state.last_seq:
        return 0
    try:
        msg = await js.get_msg(names.EVENTS_STREAM, seq=info.state.last_seq)
    except nats.js.errors.NotFoundError:
        return 0
    return decode_event(msg.data or b"").revision


async def recover(js: JetStreamContext, publisher: Publisher, clock: Clock) -> int:
    """Publish missing events and re-offer due runs; returns how many events it published."""
    kv_stream = names.kv_stream(names.FLOW_RUNS_BUCKET)
    info = await js.stream_info(kv_stream)
    last_kv = info.state.last_seq
    start = max(info.state.first_seq, await _newest_event_revision(js) - MARGIN + 1, 1)
    if not info.state.messages or start > last_kv:
        return 0
    sub = await js.subscribe(
        f"$KV.{names.FLOW_RUNS_BUCKET}.>",
        stream=kv_stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
    )
    published = 0
    now = clock.now()
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break  # nothing left at or after `start`
            meta = msg.metadata
            if msg.headers and msg.headers.get("KV-Operation") in ("DEL", "PURGE"):
                run_id = msg.subject.rsplit(".", 1)[-1]
                if await publisher.ensure_deleted_announced(run_id, meta.sequence.stream, now):
                    published += 1
            elif msg.data:
                run = decode(msg.data, FlowRun)
                if await publisher.ensure_announced(run, meta.sequence.stream, now):
                    published += 1
            if meta.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    if published:
        log.warning("recovered %d event(s) a previous orchestrator did not publish", published)
    return published
