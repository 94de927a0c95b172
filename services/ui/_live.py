"""The event streams behind the live pages.

``/runs/live``: every change of a run (from :class:`~services.ui._feed.RunFeed`)
as a rendered table row, with whether it matches the page's filters, so the
browser swaps rows in place and shows new runs on the first page.

``/runs/<id>/live``: for one run, ``changed`` whenever its state or one of its
task runs changes (the browser then fetches the run's panel again), and each
log line after the newest the page shows (``after``, a stream sequence),
with the page's level and task filters.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import anyio
import nats.errors
from anyio.streams.memory import MemoryObjectSendStream
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from starlette.requests import Request
from starlette.responses import Response

from shared import names
from shared.errors import SluiceError
from shared.models import FlowRun

from . import _format
from ._context import UI, ui_of
from ._logs import LogFilter, follow_logs
from ._runlist import RunQuery, attempt_seconds, held_back
from ._sse import EventStream, event

__all__ = ["RunFilter", "row_context", "run_events", "runs_events"]


class RunFilter:
    """The runs page's filters, applied to a run that changed."""

    def __init__(
        self,
        states: list[str],
        deployment: str | None,
        tags: list[str],
        query: RunQuery | None = None,
    ) -> None:
        self.types = {s.upper() for s in states}
        self.names = {s.lower() for s in states}
        self.deployment = deployment
        self.tags = tags
        self.query = query

    def matches(self, run: FlowRun, now: datetime | None = None) -> bool:
        if self.types and not (
            run.state.type.value in self.types or run.state.name.lower() in self.names
        ):
            return False
        if self.deployment and self.deployment not in (run.deployment_name, run.deployment_id):
            return False
        if self.query is not None and not self.query.matches_time(run, now or _format.now()):
            return False
        return all(tag in run.tags for tag in self.tags)


async def row_context(ui: UI, runs: list[FlowRun]) -> dict[str, Any]:
    """What a run's row shows beyond the run: the slot label, durations per attempt."""
    now = _format.now()
    return {
        "held": await held_back(ui.client, runs, now),
        "attempts": await attempt_seconds(ui.client, runs, now),
    }


async def runs_events(request: Request) -> Response:
    ui = ui_of(request)
    query = RunQuery.of(request)
    wanted = RunFilter(query.states, query.deployment, query.tags, query)
    first_page = query.offset == 0
    back = query.url()  # where a row's buttons come back to

    async def row(run: FlowRun, insert: bool) -> bytes:
        html = ui.fragment("_run_row.html", run=run, back=back, **await row_context(ui, [run]))
        return event("run", {"id": run.id, "html": html, "insert": insert})

    async def produce(out: MemoryObjectSendStream[bytes]) -> None:
        try:
            await follow(out)
        except SluiceError as exc:  # the browser reconnects in a moment
            await out.send(event("failed", {"message": exc.message}))

    async def follow(out: MemoryObjectSendStream[bytes]) -> None:
        async with ui.feed.subscribe() as changes:
            # The page was rendered before this stream began: send its runs
            # once more as they are now, so no change in between is missed.
            page = await query.page(ui.client, _format.now(), ui.page_size)
            for run in page.flow_runs:
                await out.send(await row(run, insert=False))
            async for run in changes:
                await out.send(await row(run, insert=first_page and wanted.matches(run)))

    return EventStream(produce, ui.closing)


async def _follow(nc: NATS, stream: str, subject: str) -> AsyncGenerator[Msg, None]:
    """New messages on ``subject`` from now on, across reconnects."""
    while True:
        reconnects = nc.stats["reconnects"]
        try:
            sub = await nc.jetstream().subscribe(
                subject,
                stream=stream,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            )
        except (nats.errors.Error, TimeoutError):
            await anyio.sleep(1.0)
            continue
        try:
            while nc.stats["reconnects"] == reconnects:
                try:
                    yield await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def run_events(request: Request) -> Response:
    ui = ui_of(request)
    run_id = request.path_params["run_id"]
    client = ui.client

    async def states(out: MemoryObjectSendStream[bytes]) -> None:
        # The first value is the run as it is now: the page may be older than
        # the stream, so it is asked to refresh once.
        async with contextlib.aclosing(client.watch_flow_run(run_id)) as runs:
            async for run in runs:
                await out.send(event("changed", {"state": run.state.name}))

    async def tasks(out: MemoryObjectSendStream[bytes]) -> None:
        subject = names.taskruns_subject(run_id)
        async with contextlib.aclosing(_follow(client.nc, names.TASKRUNS_STREAM, subject)) as msgs:
            async for _ in msgs:
                await out.send(event("changed", {"tasks": True}))

    try:
        after = max(0, int(request.query_params.get("after") or 0))
    except ValueError:
        after = 0
    wanted = LogFilter.of(request)

    async def logs(out: MemoryObjectSendStream[bytes]) -> None:
        # The page shows lines up to ``after``; the browser moves ``after``
        # on as lines arrive, so a reconnect continues where it stopped.
        lines = follow_logs(client.nc, run_id, wanted, after)
        async with contextlib.aclosing(lines) as found:
            async for line in found:
                html = ui.fragment("_log_line.html", line=line)
                await out.send(event("log", {"html": html, "seq": line.seq}))

    async def produce(out: MemoryObjectSendStream[bytes]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                for part in (states, tasks, logs):
                    tg.start_soon(part, out)
        except* SluiceError as group:
            message = "; ".join(e.message for e in group.exceptions if isinstance(e, SluiceError))
            logging.getLogger("sluice.ui").warning("live view of %s ended: %s", run_id, message)
            await out.send(event("failed", {"message": message}))

    return EventStream(produce, ui.closing)
