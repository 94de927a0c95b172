"""Finish what a crashed orchestrator left half done, at start-up.

A run's write is its event (``shared.runlog``), so no event can be missing.
What can be: the dispatch item of a run the write made due, when the
orchestrator died between the two. At start-up we replay the tail of the
``flow_runs`` stream and offer every due Scheduled run to runners again
(de-duplicated by ``Nats-Msg-Id``, and a second claim is refused anyway).
"""

from __future__ import annotations

import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import runlog
from shared.clock import Clock
from shared.codec import decode
from shared.models import FlowRun

from ._publish import Publisher

log = logging.getLogger("sluice.recovery")

#: How many of the newest writes to look at; bounds the work and covers the
#: writes that were in flight concurrently when the process died. (The
#: scheduler offers its due runs again too, so an older one is not stranded.)
MARGIN = 2000


async def recover(js: JetStreamContext, publisher: Publisher, clock: Clock) -> int:
    """Offer the due runs among the newest writes again; returns how many."""
    info = await js.stream_info(runlog.STREAM)
    last = info.state.last_seq
    start = max(info.state.first_seq, last - MARGIN + 1, 1)
    if not info.state.messages or start > last:
        return 0
    sub = await js.subscribe(
        runlog.SUBJECTS,
        stream=runlog.STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
    )
    offered = 0
    now = clock.now()
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break  # nothing left at or after `start`
            deleted = (msg.headers or {}).get(runlog.KV_OPERATION) in runlog.DELETE_OPERATIONS
            if msg.data and not deleted:
                offered += await publisher.offer(decode(msg.data, FlowRun), now)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    if offered:
        log.info("offered %d due run(s) to runners again", offered)
    return offered
