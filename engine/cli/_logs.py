"""``sluice flow-run logs`` and ``sluice flow-run watch``: a run's log lines and states."""

from __future__ import annotations

import logging
from collections import deque
from typing import Annotated

import typer
from rich.markup import escape

from engine.client import Client
from shared.messages import LogRecord
from shared.models import FlowRun
from shared.states import StateType

from . import _render
from ._follow import WatchOutput, follow_run
from ._invoke import EXIT_FAILURE, with_client
from ._resolve import resolve_run

__all__ = ["logs", "parse_level", "watch"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

RunRef = Annotated[
    str,
    typer.Argument(metavar="RUN", help="The flow run: its id, a unique prefix of it, or its name."),
]


def parse_level(text: str | None) -> int:
    """``--level``: a level name (any case) or number; 0 (everything) when not given."""
    if text is None:
        return 0
    name = text.strip().upper()
    if name.isdigit():
        return int(name)
    if name == "WARN":
        name = "WARNING"
    if name not in LEVELS:
        raise typer.BadParameter(
            f"unknown level {text!r}; use one of {', '.join(LEVELS)} or a number",
            param_hint="'--level'",
        )
    return int(getattr(logging, name))


def _complete_level(incomplete: str) -> list[str]:
    return [level for level in LEVELS if level.startswith(incomplete.upper())]


def logs(
    run_ref: RunRef,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new lines until the run ends."),
    ] = False,
    tail: Annotated[
        int | None,
        typer.Option(
            "--tail", "-n", min=0, metavar="N", help="Only the last N lines (then new ones)."
        ),
    ] = None,
    level: Annotated[
        str | None,
        typer.Option(
            "--level",
            "-l",
            metavar="LEVEL",
            help="Only lines at this level or above: DEBUG, INFO, WARNING, ERROR, CRITICAL.",
            autocompletion=_complete_level,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print JSON: an array, or one object per line with --follow."),
    ] = False,
) -> None:
    """Print a flow run's log lines, oldest first."""
    least = parse_level(level)

    def show(record: LogRecord) -> None:
        if as_json:
            _render.print_json(record)
        else:
            _render.out().print(_render.log_line(record))

    async def command(client: Client) -> None:
        run_id = await resolve_run(client, run_ref)
        await client.read_flow_run(run_id)  # an unknown id is an error, not silence
        matching = [r async for r in client.logs(run_id) if r.level >= least]
        stored = matching
        if tail is not None:
            stored = list(deque(matching, maxlen=tail)) if tail else []
        if follow:
            for record in stored:
                show(record)
            # The follower starts from the first line: skip the lines read above
            # (printed, or left out by --tail) and keep the level filter.
            skip, seen = len(matching), 0

            def fresh(record: LogRecord) -> None:
                nonlocal seen
                if record.level < least:
                    return
                seen += 1
                if seen > skip:
                    show(record)

            await follow_run(client, run_id, on_log=fresh)
            return
        if as_json:
            _render.print_json(stored)
            return
        for record in stored:
            show(record)
        if not stored:
            _render.err().print("No log lines yet." if least == 0 else "No log lines match.")

    with_client(command)


def watch(
    run_ref: RunRef,
    no_logs: Annotated[bool, typer.Option("--no-logs", help="Show states only.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run as JSON once it has ended.")
    ] = False,
) -> None:
    """Follow a flow run until it ends: every state it went through, and its logs.

    States the run passed before the watch began are shown too, from its
    history. Exit status 0 when it completed, 1 when it failed, crashed or was
    cancelled. Ctrl-C stops watching; the run goes on.
    """

    async def command(client: Client) -> FlowRun:
        run_id = await resolve_run(client, run_ref)
        if as_json:
            return await follow_run(client, run_id, on_log=lambda record: None)
        output = WatchOutput(_render.out(), logs=not no_logs)
        return await follow_run(client, run_id, on_log=output.log, on_state=output.state)

    final = with_client(command)
    print_final(final, as_json=as_json)


def print_final(final: FlowRun, *, as_json: bool) -> None:
    """The run as it ended; exits 1 unless it completed."""
    if as_json:
        _render.print_json(final)
    else:
        _render.out().print(
            f"Flow run {escape(final.name)} ended ", _render.state_text(final.state), sep=""
        )
    if final.state.type is not StateType.COMPLETED:
        raise typer.Exit(EXIT_FAILURE)
