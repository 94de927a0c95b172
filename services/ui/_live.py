"""The event streams behind the live pages.

``/runs/live``: every change of a run (from :class:`~services.ui._feed.RunFeed`)
as a rendered table row, with whether it matches the page's filters, so the
browser swaps rows in place and shows new runs on the first page.

``/runs/<id>/live``: for one run, ``changed`` whenever its state or one of its
task runs changes (the browser then fetches the run's panel again), and each
log line as it arrives. On (re)connect it starts with ``reset`` and sends
every log line from the first, so a reconnected page is whole again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

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

from ._context import ui_of
from ._sse import EventStream, event

__all__ = ["RunFilter", "run_events", "runs_events"]


class RunFilter:
    """The runs page's filters, applied to a run that changed."""

    def __init__(self, states: list[str], deployment: str | None, tags: list[str]) -> None:
        self.types = {s.upper() for s in states}
        self.names = {s.lower() for s in states}
        self.deployment = deployment
        self.tags = tags

    def matches(self, run: FlowRun) -> bool:
        if self.types and not (
            run.state.type.value in self.types or run.state.name.lower() in self.names
        ):
            return False
        if self.deployment and self.deployment not in (run.deployment_name, run.deployment_id):
            return False
        return all(tag in run.tags for tag in self.tags)


def filters_of(request: Request) -> tuple[list[str], str | None, list[str]]:
    q = request.query_params
    states = [s for s in q.getlist("state") if s]
    deployment = q.get("deployment") or None
    tags = [t.strip() for t in (q.get("tag") or "").split(",") if t.strip()]
    return states, deployment, tags


async def runs_events(request: Request) -> Response:
    ui = ui_of(request)
    states, deployment, tags = filters_of(request)
    wanted = RunFilter(states, deployment, tags)
    first_page = request.query_params.get("offset", "0") in ("", "0")

    try:
        offset = max(0, int(request.query_params.get("offset") or 0))
    except ValueError:
        offset = 0
    query = request.url.query
    back = f"/runs?{query}" if query else "/runs"  # where a row's buttons come back to

    def row(run: FlowRun, insert: bool) -> bytes:
        html = ui.fragment("_run_row.html", run=run, back=back)
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
            page = await ui.client.list_flow_runs(
                states=states, deployment=deployment, tags=tags, limit=ui.page_size, offset=offset
            )
            for run in page.flow_runs:
                await out.send(row(run, insert=False))
            async for run in changes:
                await out.send(row(run, insert=first_page and wanted.matches(run)))

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

    async def logs(out: MemoryObjectSendStream[bytes]) -> None:
        await out.send(event("reset", {}))
        async with contextlib.aclosing(client.logs(run_id, follow=True)) as records:
            async for record in records:
                html = ui.fragment("_log_line.html", record=record)
                await out.send(event("log", {"html": html}))

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
