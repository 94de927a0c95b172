"""How the CLI shows things: rich tables and panels for people, JSON for programs.

Owns every byte the CLI writes. Consoles are built per call, so output goes
to whatever ``sys.stdout``/``sys.stderr`` are at that moment (a test runner
swaps them). Text from the stack (messages, names, parameters) is escaped, so
a ``[bold]`` in a run name is shown, not interpreted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, RenderableType
from rich.json import JSON
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.codec import encode
from shared.errors import SluiceError
from shared.messages import LogRecord
from shared.models import (
    CronSchedule,
    Deployment,
    DeploymentSchedule,
    FlowRun,
    IntervalSchedule,
)
from shared.states import State, StateType

STATE_STYLES: dict[StateType, str] = {
    StateType.SCHEDULED: "yellow",
    StateType.PENDING: "cyan",
    StateType.RUNNING: "blue",
    StateType.COMPLETED: "green",
    StateType.FAILED: "red",
    StateType.CRASHED: "bold red",
    StateType.CANCELLING: "magenta",
    StateType.CANCELLED: "magenta",
    StateType.PAUSED: "bright_black",
}

LEVEL_STYLES = {
    logging.DEBUG: "dim",
    logging.WARNING: "yellow",
    logging.ERROR: "red",
    logging.CRITICAL: "bold red",
}


#: Width when stdout is not a terminal and COLUMNS is unset: wide enough that a
#: table piped to grep keeps whole ids on one line (rich would assume 80).
PIPE_WIDTH = 200


def out() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = PIPE_WIDTH
    return console


def err() -> Console:
    return Console(stderr=True, highlight=False)


# --- machine-readable output ------------------------------------------------------
def print_json(obj: Any) -> None:
    """One JSON document (msgspec encoding: RFC 3339 times, snake_case) on stdout."""
    sys.stdout.write(encode(obj).decode() + "\n")
    sys.stdout.flush()


# --- errors and hints -------------------------------------------------------------
def print_error(exc: SluiceError) -> None:
    console = err()
    console.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    choices = exc.details.get("choices")
    # The orchestrator's messages usually name the choices already.
    if isinstance(choices, list) and any(str(c) not in exc.message for c in choices):
        console.print("choose one of:")
        for choice in choices:
            console.print(f"  {escape(str(choice))}", soft_wrap=True)


def hint(text: str) -> None:
    """A next step, such as a command to copy; never wrapped, so it copies whole."""
    out().print(Text(text, style="dim"), soft_wrap=True)


# --- small pieces -------------------------------------------------------------------
def duration(seconds: float) -> str:
    """``45s``, ``5m``, ``2h 3m``, ``3d 4h``: the two largest units, zeros left out."""
    rest = round(abs(seconds))
    parts: list[tuple[int, str]] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, rest = divmod(rest, size)
        if amount or parts:
            parts.append((amount, unit))
    return " ".join(f"{amount}{unit}" for amount, unit in parts[:2] if amount) or "0s"


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """Local wall-clock time, with how far away it is: ``2026-11-20 08:00:00 (in 5m)``."""
    if moment is None:
        return "-"
    shown = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{shown} ({relative(moment, now)})"


def state_text(state: State) -> Text:
    return Text(state.describe(), style=STATE_STYLES.get(state.type, ""))


def _json(data: Any) -> RenderableType:
    if data in ({}, [], None):
        return Text(json.dumps(data), style="dim")
    return JSON.from_data(data, default=str, sort_keys=True)


def _tags(tags: Iterable[str]) -> str:
    return ", ".join(tags) or "-"


def _details(rows: list[tuple[str, RenderableType | str | None]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        if value is None:
            continue
        grid.add_row(label, Text(value) if isinstance(value, str) else value)
    return grid


# --- flow runs ------------------------------------------------------------------------
def compact_json(data: Any) -> str:
    """One line of JSON for a value from the stack (anything else as its text)."""
    return json.dumps(data, default=str, ensure_ascii=False)


def flow_run_panel(
    run: FlowRun, waiting: str | None = None, *, result: RenderableType | None = None
) -> Panel:
    state = state_text(run.state)
    if run.state.message:
        state.append(f" - {run.state.message}", style="")
    elapsed = None
    if run.start_time is not None and run.end_time is not None:
        elapsed = duration((run.end_time - run.start_time).total_seconds())
    rows: list[tuple[str, RenderableType | str | None]] = [
        ("id", run.id),
        ("flow", run.flow_name),
        ("deployment", run.deployment_name),
        ("state", state),
        ("not started because", waiting),
        ("expected start", when(run.expected_start_time)),
        ("started", when(run.start_time) if run.start_time else None),
        ("ended", when(run.end_time) if run.end_time else None),
        ("duration", elapsed),
        ("parameters", _json(run.parameters)),
        ("result", result),
        ("tags", _tags(run.tags)),
        ("queue", run.queue),
        ("runner", run.runner),
        ("run count", str(run.run_count)),
        ("idempotency key", run.idempotency_key),
        ("parent run", run.parent_flow_run_id),
        ("created", when(run.created)),
        ("updated", when(run.updated)),
        ("traceback", traceback_text(run)),
    ]
    return Panel(_details(rows), title=escape(run.name), title_align="left", expand=False)


def traceback_text(run: FlowRun) -> Text | None:
    """The traceback the run's state keeps (a failed or crashed run), else None."""
    tb = run.state.details.traceback
    return Text(tb.rstrip("\n"), style="dim") if tb else None


def _table(*headers: str) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold",
    )
    for header in headers:
        table.add_column(header)
    return table


table = _table


def _fit(table: Table, index: int, values: list[str], *, at_most: int = 24) -> None:
    """Keep a column's short values on one line when the table must shrink."""
    table.columns[index].min_width = min(max((len(v) for v in values), default=0), at_most)
    table.columns[index].overflow = "fold"


def relative(moment: datetime, now: datetime | None = None) -> str:
    delta = (moment - (now or datetime.now(UTC))).total_seconds()
    if abs(delta) < 1:
        return "now"
    return f"in {duration(delta)}" if delta > 0 else f"{duration(delta)} ago"


def flow_runs_table(runs: list[FlowRun]) -> Table:
    """ID, deployment, name, state, and when it starts (or started)."""
    table = _table("ID", "DEPLOYMENT", "NAME", "STATE", "WHEN")
    table.columns[0].no_wrap = True
    table.columns[3].no_wrap = True
    targets = [run.deployment_name or run.flow_name for run in runs]
    _fit(table, 1, targets)
    _fit(table, 2, [run.name for run in runs])
    for run, target in zip(runs, targets, strict=True):
        table.add_row(
            Text(run.id),
            Text(target),
            Text(run.name),
            state_text(run.state),
            Text(relative(run.start_time or run.expected_start_time)),
        )
    return table


def state_line(run: FlowRun, *, traceback: bool = True) -> Text:
    """One line of ``--watch`` output: ``07:35:25  Running``, plus the message
    (and a final state's traceback, unless ``traceback`` is False)."""
    line = Text(f"{run.state.timestamp.astimezone():%H:%M:%S}  ")
    line.append_text(state_text(run.state))
    if run.state.message:
        line.append(f"  {run.state.message}")
    tb = traceback_text(run) if traceback and run.state.is_terminal else None
    if tb is not None:
        line.append("\n")
        line.append_text(tb)
    return line


def log_line(record: LogRecord) -> Text:
    level = logging.getLevelName(record.level)
    style = LEVEL_STYLES.get(record.level, "")
    line = Text(f"{record.timestamp.astimezone():%H:%M:%S}  ")
    line.append(f"{level:<8}", style=style)
    if record.task_run_name:
        line.append(f" {record.task_run_name}", style="cyan")
        line.append(" |")
    line.append(f" {record.message}")
    return line


# --- deployments ----------------------------------------------------------------------
def schedule_text(item: DeploymentSchedule) -> str:
    sched = item.schedule
    if isinstance(sched, IntervalSchedule):
        text = f"every {duration(sched.interval)}"
        if sched.anchor_date is not None:
            text += f" from {sched.anchor_date.isoformat()}"
    elif isinstance(sched, CronSchedule):
        text = f"cron {sched.cron!r} ({sched.timezone})"
    else:
        text = f"rrule {sched.rrule!r} ({sched.timezone})"
    return text if item.active else f"{text} [inactive]"


def _status(deployment: Deployment) -> Text:
    return Text("paused", style="yellow") if deployment.paused else Text("active", style="green")


def deployment_panel(deployment: Deployment) -> Panel:
    schedules = "\n".join(schedule_text(s) for s in deployment.schedules) or "-"
    limit = deployment.concurrency_limit
    rows: list[tuple[str, RenderableType | str | None]] = [
        ("id", deployment.id),
        ("flow", deployment.flow_name),
        ("version", deployment.version),
        ("description", deployment.description),
        ("entrypoint", deployment.entrypoint),
        ("path", deployment.path),
        ("bundle", _bundle(deployment)),
        ("status", _status(deployment)),
        ("schedules", schedules),
        ("parameters", _json(deployment.parameters)),
        ("parameter schema", _json(deployment.parameter_schema)),
        ("tags", _tags(deployment.tags)),
        ("queue", deployment.queue),
        ("concurrency limit", str(limit) if limit is not None else "none"),
        ("infrastructure", deployment.infrastructure.type),
        ("created", when(deployment.created)),
        ("updated", when(deployment.updated)),
    ]
    return Panel(
        _details(rows), title=escape(deployment.full_name), title_align="left", expand=False
    )


def _bundle(deployment: Deployment) -> str | None:
    b = deployment.bundle
    if b is None:
        return None
    return f"{b.digest} ({size_text(b.size)}, {b.files} file{'s' if b.files != 1 else ''})"


def size_text(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def deployments_table(deployments: list[Deployment]) -> Table:
    table = _table("NAME", "STATUS", "SCHEDULES", "VERSION", "ID")
    table.columns[1].no_wrap = True
    table.columns[4].no_wrap = True
    _fit(table, 0, [d.full_name for d in deployments], at_most=32)
    for d in deployments:
        table.add_row(
            Text(d.full_name),
            _status(d),
            Text("\n".join(schedule_text(s) for s in d.schedules) or "-"),
            Text(d.version or "-"),
            Text(d.id),
        )
    return table
