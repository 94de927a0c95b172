"""Following a run from the stack: its state changes and its log records.

Both read JetStream with ordered consumers (rebuilt after a reconnect), never
core pub/sub alone, so a follower that was away catches up. Used by
:class:`~engine.client.Client`'s ``watch_flow_run`` and ``logs``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from shared import names, runlog
from shared.codec import decode
from shared.errors import FlowRunNotFound, StackUnavailable
from shared.messages import FlowRunDeleted, LogRecord
from shared.models import FlowRun

__all__ = ["ReadRun", "read_logs", "watch_run"]

#: Reads a run and the KV revision it was read at.
ReadRun = Callable[[str], Awaitable[tuple[FlowRun, int]]]


async def watch_run(
    nc: NATS, read: ReadRun, run_id: str, resync: float, *, history: bool = False
) -> AsyncGenerator[FlowRun, None]:
    """See :meth:`Client.watch_flow_run`."""
    run, last = await read(run_id)  # an unknown run fails here, before any subscription
    if history:
        last = 0  # every event from the first; a resync still yields the stored run
    else:
        yield run
    js = nc.jetstream()
    while True:
        reconnects = nc.stats["reconnects"]
        sub = await _follow(js, runlog.subject(run_id), runlog.STREAM)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=resync)
                except nats.errors.TimeoutError:
                    run, revision = await read(run_id)
                    if revision > last:
                        for each in runlog.transitions(runlog.event_for(run, revision), last):
                            assert not isinstance(each, FlowRunDeleted)
                            yield each.flow_run
                        last = revision
                    if nc.stats["reconnects"] != reconnects:
                        break
                    continue
                try:
                    event = runlog.event_of(msg)
                except msgspec.DecodeError:
                    continue
                if isinstance(event, FlowRunDeleted):
                    raise FlowRunNotFound(f"flow run {run_id} was deleted")
                if event.revision <= last:
                    continue
                # The stream keeps a run's newest write only: the ones this
                # follower did not see come from the run's history.
                for each in runlog.transitions(event, after=last):
                    assert not isinstance(each, FlowRunDeleted)
                    yield each.flow_run
                last = event.revision
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone
                await sub.unsubscribe()


async def read_logs(nc: NATS, run_id: str, follow: bool) -> AsyncGenerator[LogRecord, None]:
    """See :meth:`Client.logs`."""
    js = nc.jetstream()
    subject = names.logs_subject(run_id)
    last = 0
    if not follow:
        try:
            last = (await js.get_last_msg(names.LOGS_STREAM, subject)).seq or 0
        except nats.js.errors.NotFoundError:
            return
    sub = await _follow(js, subject, names.LOGS_STREAM)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=3600.0)
            except nats.errors.TimeoutError:
                continue
            try:
                record = decode(msg.data, LogRecord)
            except msgspec.DecodeError:
                record = None  # not a record of ours; skip it
            if record is not None:
                yield record
            if not follow and msg.metadata.sequence.stream >= last:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _follow(js: JetStreamContext, subject: str, stream: str) -> Any:
    """An ordered consumer of ``subject`` from the start; StackUnavailable if JetStream
    does not answer (a stream whose leader is moving, a lost connection)."""
    try:
        return await js.subscribe(
            subject,
            stream=stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
    except (nats.errors.TimeoutError, TimeoutError, nats.errors.ConnectionClosedError) as exc:
        raise StackUnavailable(f"cannot follow {subject} in {stream}: {exc!r}") from None
