"""``sluice flow-run inspect``: one run in full, with its task runs, state history and result.

Reads the run from ``flow_runs`` (its transitions from the state history the
run keeps) and its task runs from the task-run stream; nothing here writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from engine._core.resume import read_events, read_task_records
from engine._stack.diagnose import why_not_started
from engine.client import Client
from shared.messages import FlowRunDeleted, TaskRunRecord
from shared.models import FlowRun
from shared.states import State, StateType

from . import _render
from ._invoke import with_client
from ._resolve import resolve_run

__all__ = ["inspect", "ui_link"]

#: Characters of a result shown inline; the rest is cut (``--json`` has it whole).
SHOWN_RESULT = 2000
DEFAULT_UI = "http://127.0.0.1:8480"


def ui_link(run_id: str) -> str:
    """The run's page in the web UI: ``SLUICE_UI_URL`` (the UI's address as seen from
    here), else the local UI on ``SLUICE_UI_PORT`` (default 8480)."""
    base = os.environ.get("SLUICE_UI_URL")
    if not base:
        port = os.environ.get("SLUICE_UI_PORT")
        base = f"http://127.0.0.1:{port}" if port else DEFAULT_UI
    return f"{base.rstrip('/')}/runs/{run_id}"


@dataclass
class TaskRunRow:
    name: str
    state: State
    attempt: int
    started: datetime | None = None
    ended: datetime | None = None


def task_rows(records: list[TaskRunRecord]) -> list[TaskRunRow]:
    """Each task run's newest state, in the order the tasks were called."""
    rows: dict[str, TaskRunRow] = {}
    for record in records:
        row = rows.get(record.task_run_id)
        if row is None:
            row = rows[record.task_run_id] = TaskRunRow(
                name=record.name, state=record.state, attempt=record.flow_run_attempt
            )
        elif record.state.timestamp >= row.state.timestamp:
            row.state = record.state
        if row.started is None and record.state.type is not StateType.PENDING:
            row.started = record.state.timestamp
        if record.state.is_terminal:
            row.ended = record.state.timestamp
    return list(rows.values())


def history(events: list[Any], run: FlowRun) -> list[State]:
    """The states the run went through, oldest first (a repeated event once)."""
    seen: set[int] = set()
    states: list[State] = []
    for event in events:
        if event.revision in seen or isinstance(event, FlowRunDeleted):
            continue
        seen.add(event.revision)
        states.append(event.flow_run.state)
    if not states or states[-1].timestamp < run.state.timestamp:
        states.append(run.state)  # the run moved on after the write read
    return states


def dropped_note(run: FlowRun) -> list[RenderableType]:
    """Says that older states are not shown: a run keeps its newest ones only."""
    if not run.history_dropped:
        return []
    return [Text(f"({run.history_dropped} earlier state(s) not kept)", style="dim")]


def _history_table(states: list[State]) -> RenderableType:
    table = _render.table("TIME", "STATE", "MESSAGE")
    table.columns[0].no_wrap = True
    for state in states:
        table.add_row(
            Text(f"{state.timestamp.astimezone():%Y-%m-%d %H:%M:%S}"),
            _render.state_text(state),
            Text(state.message or ""),
        )
    return table


def _tasks_table(rows: list[TaskRunRow]) -> RenderableType:
    table = _render.table("TASK RUN", "STATE", "ATTEMPT", "DURATION")
    for row in rows:
        took = "-"
        if row.started is not None and row.ended is not None:
            took = _render.duration((row.ended - row.started).total_seconds())
        table.add_row(Text(row.name), _render.state_text(row.state), str(row.attempt), took)
    return table


def result_text(run: FlowRun) -> Text:
    """The result of a completed run (inline, or where it is stored), or why there is none."""
    state = run.state
    if state.type is StateType.COMPLETED:
        if state.data is not None:
            shown = _render.compact_json(state.data)
            cut = "…" if len(shown) > SHOWN_RESULT else ""
            return Text(shown[:SHOWN_RESULT] + cut)
        if state.details.result_ref:
            return Text(f"stored as {state.details.result_ref}")
        return Text("none kept", style="dim")
    if state.is_terminal and state.data is not None:
        return Text(_render.compact_json(state.data)[:SHOWN_RESULT], style="red")
    return Text("not finished yet" if not state.is_terminal else "none", style="dim")


def inspect(
    run_ref: Annotated[
        str,
        typer.Argument(
            metavar="RUN", help="The flow run: its id, a unique prefix of it, or its name."
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
    web: Annotated[
        bool, typer.Option("--web", help="Print the run's page in the web UI, and nothing else.")
    ] = False,
) -> None:
    """Show one flow run in full: its state, parameters, result, state history and task runs."""

    async def command(client: Client) -> None:
        run_id = await resolve_run(client, run_ref)
        run = await client.read_flow_run(run_id)
        if web:
            _render.out().print(ui_link(run.id), soft_wrap=True)
            return
        if as_json:
            _render.print_json(run)
            return
        waiting = await why_not_started(client, run)
        states = history(await read_events(client.nc, run.id), run)
        tasks = task_rows(await read_task_records(client.nc, run.id))
        parts: list[RenderableType] = [
            _render.flow_run_panel(run, waiting, result=result_text(run)),
            Text("\nState history", style="bold"),
            _history_table(states),
            *dropped_note(run),
            Text("\nTask runs", style="bold"),
            _tasks_table(tasks) if tasks else Text("none", style="dim"),
        ]
        _render.out().print(Group(*parts))
        _render.hint(f"In the web UI: {ui_link(run.id)}")

    with_client(command)
