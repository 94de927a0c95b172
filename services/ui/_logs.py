"""A run's logs a page at a time: the newest lines first, earlier ones on request, filtered.

Lines are read from the public ``FLOWRUN_LOGS`` stream (subject
``flowrun.logs.<run id>``). A line's stream sequence is its cursor: the page
shows the newest ``limit`` matching lines, "earlier" asks for the ones before
the oldest shown, and the live stream continues after the newest shown, so
nothing is shown twice and nothing in between is lost.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from shared import names
from shared.codec import decoder
from shared.errors import StackUnavailable
from shared.messages import LogRecord

from ._context import run_id_of, ui_of

__all__ = [
    "LEVELS",
    "LogFilter",
    "LogLine",
    "LogPage",
    "follow_logs",
    "lines_of",
    "log_page",
    "logs_part",
]

LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}
LEVELS["ERROR"] = logging.ERROR
DEFAULT_LINES = 200
MAX_LINES = 2000


def lines_of(request: Request) -> int:
    """How many lines a page of logs holds (``?lines=N``, 1 to ``MAX_LINES``)."""
    try:
        return min(MAX_LINES, max(1, int(request.query_params.get("lines") or DEFAULT_LINES)))
    except ValueError:
        return DEFAULT_LINES


_decode = decoder(LogRecord).decode


@dataclass(frozen=True)
class LogFilter:
    level: int = 0
    """Lines at this level or above."""
    task: str | None = None
    """A task run id, ``flow`` for the flow's own lines, or None for every line."""

    def matches(self, record: LogRecord) -> bool:
        if record.level < self.level:
            return False
        if self.task == "flow":
            return record.task_run_id is None
        return self.task is None or record.task_run_id == self.task

    @property
    def level_name(self) -> str:
        return next((n for n, v in LEVELS.items() if v == self.level), "")

    @classmethod
    def of(cls, request: Request) -> LogFilter:
        q = request.query_params
        return cls(level=LEVELS.get((q.get("level") or "").upper(), 0), task=q.get("task") or None)

    def query(self) -> dict[str, str]:
        out = {}
        if self.level_name:
            out["level"] = self.level_name
        if self.task:
            out["task"] = self.task
        return out


@dataclass(frozen=True)
class LogLine:
    seq: int
    record: LogRecord


@dataclass(frozen=True)
class LogPage:
    lines: list[LogLine]
    earlier: int | None
    """Pass as ``before`` for the page before this one; None when this is the oldest."""
    last_seq: int
    """The newest line stored when the page was read (matching or not): live lines follow it."""


async def _subscribe(nc: NATS, run_id: str, start: int) -> JetStreamContext.PushSubscription:
    config = (
        ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        if start <= 1
        else ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    )
    return await nc.jetstream().subscribe(
        names.logs_subject(run_id), stream=names.LOGS_STREAM, ordered_consumer=True, config=config
    )


async def _scan(nc: NATS, run_id: str, wanted: LogFilter, start: int, stop: int) -> list[LogLine]:
    """The matching lines of the run with stream sequence in ``[start, stop]``.

    The run must have a line at ``stop`` or after it, so the read always ends.
    """
    found: list[LogLine] = []
    sub = await _subscribe(nc, run_id, start)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=10.0)
            except nats.errors.TimeoutError:
                raise StackUnavailable(f"the logs of {run_id} stopped arriving") from None
            seq = msg.metadata.sequence.stream
            if seq > stop:
                break
            with contextlib.suppress(msgspec.DecodeError):
                record = _decode(msg.data)
                if wanted.matches(record):
                    found.append(LogLine(seq, record))
            if seq == stop:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return found


async def log_page(
    nc: NATS,
    run_id: str,
    wanted: LogFilter,
    *,
    before: int | None = None,
    limit: int = DEFAULT_LINES,
) -> LogPage:
    """The newest ``limit`` matching lines (before sequence ``before``, if given).

    Reads back from the end in growing windows of stream sequences, each
    read once, rather than the whole log: a long run's newest lines cost
    about as much as a short run's. A filter that matches little reads
    further back.
    """
    js = nc.jetstream()
    try:
        last = (await js.get_last_msg(names.LOGS_STREAM, names.logs_subject(run_id))).seq or 0
    except nats.js.errors.NotFoundError:
        return LogPage(lines=[], earlier=None, last_seq=0)
    except (nats.errors.Error, TimeoutError) as exc:
        raise StackUnavailable(f"cannot read the logs of {run_id}: {exc}") from None
    high = min(last, before - 1) if before else last
    window = max(1000, 4 * limit)
    found: list[LogLine] = []
    while high >= 1:
        low = max(1, high - window + 1)
        found[:0] = await _scan(nc, run_id, wanted, low, high)
        if len(found) > limit or low == 1:
            break
        high, window = low - 1, window * 4
    page = found[-limit:]
    earlier = page[0].seq if len(found) > len(page) else None
    return LogPage(lines=page, earlier=earlier, last_seq=last)


async def follow_logs(
    nc: NATS, run_id: str, wanted: LogFilter, after: int
) -> AsyncGenerator[LogLine, None]:
    """Matching lines stored after sequence ``after``, as they come, across reconnects."""
    next_seq = after + 1
    while True:
        reconnects = nc.stats["reconnects"]
        try:
            sub = await _subscribe(nc, run_id, next_seq)
        except (nats.errors.Error, TimeoutError):
            await anyio.sleep(1.0)
            continue
        try:
            while nc.stats["reconnects"] == reconnects:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                seq = msg.metadata.sequence.stream
                next_seq = seq + 1
                try:
                    record = _decode(msg.data)
                except msgspec.DecodeError:
                    continue
                if wanted.matches(record):
                    yield LogLine(seq, record)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def logs_part(request: Request) -> Response:
    """``/runs/<id>/logs?before=SEQ&level=&task=``: a page of earlier lines, as HTML.

    The cursor for the page before it comes back in the ``X-Earlier`` header
    (absent when there is none).
    """
    ui = ui_of(request)
    run_id = run_id_of(request)
    try:
        before = int(request.query_params.get("before") or 0) or None
    except ValueError:
        before = None
    page = await log_page(
        ui.client.nc, run_id, LogFilter.of(request), before=before, limit=lines_of(request)
    )
    html = "".join(ui.fragment("_log_line.html", line=line) for line in page.lines)
    headers = {"X-Earlier": str(page.earlier)} if page.earlier else {}
    return HTMLResponse(html, headers=headers)
