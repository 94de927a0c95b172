"""One live feed of flow-run changes, shared by every browser watching the runs page.

It follows the public ``flow_runs`` KV bucket (an ordered consumer on the
bucket's stream, which is what a KV watch is) from "now" on, and fans each new
value out to the subscribers' memory streams. One consumer serves any number
of browsers, so opening tabs costs NATS nothing.

The consumer is rebuilt after a reconnect (nats-py's ordered consumers can go
quiet across one) and resumes after the last stream sequence it delivered, so
no change is skipped. A subscriber too slow to keep up loses updates rather
than holding the others back: the runs page is a view, and a reload shows the
truth. Closing the feed ends every subscriber's stream.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import msgspec
import nats.errors
import nats.js.errors
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import names
from shared.codec import decoder
from shared.models import FlowRun

__all__ = ["RunFeed"]

log = logging.getLogger("sluice.ui")

_SUBJECT = f"$KV.{names.FLOW_RUNS_BUCKET}.>"
_STREAM = names.kv_stream(names.FLOW_RUNS_BUCKET)
_BUFFER = 256


class RunFeed:
    """Fan-out of ``flow_runs`` changes. Start :meth:`run` in a task group."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._subscribers: set[MemoryObjectSendStream[FlowRun]] = set()
        self._decode = decoder(FlowRun).decode
        self._closed = False

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemoryObjectReceiveStream[FlowRun]]:
        """Changes from now on until the feed closes or the caller leaves."""
        send, receive = anyio.create_memory_object_stream[FlowRun](_BUFFER)
        if self._closed:
            send.close()
        else:
            self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def close(self) -> None:
        """End every subscriber's stream (the server is shutting down)."""
        self._closed = True
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()

    def _publish(self, run: FlowRun) -> None:
        for send in list(self._subscribers):
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                send.send_nowait(run)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the bucket until cancelled; retries while the stack is not there yet."""
        js = self._nc.jetstream()
        next_seq: int | None = None  # None: from now on
        started = False
        while True:
            reconnects = self._nc.stats["reconnects"]
            config = (
                ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
                if next_seq is None
                else ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=next_seq
                )
            )
            try:
                sub = await js.subscribe(
                    _SUBJECT, stream=_STREAM, ordered_consumer=True, config=config
                )
            except (nats.errors.Error, TimeoutError) as exc:
                # Most often: the orchestrator has not created the bucket yet.
                log.debug("cannot follow %s yet (%s); retrying", _STREAM, exc)
                if not started:
                    started = True
                    task_status.started()
                await anyio.sleep(1.0)
                continue
            if not started:
                started = True
                task_status.started()
            try:
                while self._nc.stats["reconnects"] == reconnects:
                    try:
                        msg = await sub.next_msg(timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    next_seq = msg.metadata.sequence.stream + 1
                    if not msg.data:  # a delete or purge marker
                        continue
                    try:
                        run = self._decode(msg.data)
                    except msgspec.DecodeError:
                        continue
                    self._publish(run)
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
