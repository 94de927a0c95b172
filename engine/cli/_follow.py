"""Following one flow run until it ends: its state changes and its log lines.

Used by ``sluice run --watch`` and ``sluice flow-run logs --follow``. Two
tasks share one task group: one watches the run's KV entry, one tails its log
stream. When the run reaches a terminal state the log tail is cancelled and
the run's stored records are read once more, printing only those the tail had
not shown yet, so lines written just before the end are not lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio
from rich.console import Console

from engine.cli import _render
from engine.client import Client
from shared.messages import LogRecord
from shared.models import FlowRun

__all__ = ["WatchOutput", "follow_run"]


async def follow_run(
    client: Client,
    run_id: str,
    *,
    on_log: Callable[[LogRecord], None],
    on_state: Callable[[FlowRun], None] | None = None,
) -> FlowRun:
    """Call ``on_state`` for each state the run went through, from its first,
    and ``on_log`` for each log record, until the run is finished; return the
    finished run.

    Raises FlowRunNotFound for an unknown id and StackUnavailable when the
    stack goes away. Cancellation (Ctrl-C) stops following; the run goes on.
    """
    shown = 0
    final: FlowRun | None = None

    def show(record: LogRecord) -> None:
        nonlocal shown
        shown += 1
        on_log(record)

    async def tail_logs() -> None:
        async with contextlib.aclosing(client.logs(run_id, follow=True)) as records:
            async for record in records:
                show(record)

    # A retried run's history holds earlier terminal states: only one written
    # at or after the run as it is now ends the watch.
    current = await client.read_flow_run(run_id)
    async with anyio.create_task_group() as tg:
        last_state: tuple[str, str, object] | None = None
        # From the run's history: states it passed before the watch began are
        # shown too (a quick run is often Running by the time we look).
        async with contextlib.aclosing(client.watch_flow_run(run_id, history=True)) as runs:
            async for run in runs:
                if last_state is None:
                    # The run exists: only now is it worth tailing its logs.
                    tg.start_soon(tail_logs)
                if run.state.is_terminal and run.updated >= current.updated:
                    final = run  # shown below, after the log lines that led to it
                    break
                state_key = (run.state.type.value, run.state.name, run.state.timestamp)
                if state_key != last_state:
                    last_state = state_key
                    if on_state is not None:
                        on_state(run)
        tg.cancel_scope.cancel()

    stored = [record async for record in client.logs(run_id)]
    for record in stored[shown:]:
        show(record)
    assert final is not None  # the watch only ends by reaching a terminal state
    if on_state is not None:
        on_state(final)
    return final


class WatchOutput:
    """What ``--watch`` prints: log lines as they come, each state as the run enters it.

    A final state's traceback is left out when a log line already showed the
    same one: a task that failed for good logs its traceback, and the flow's
    Failed state keeps that very traceback, so it would be printed twice.
    """

    def __init__(self, console: Console, *, logs: bool = True) -> None:
        self._console = console
        self._logs = logs
        self._tracebacks: list[str] = []

    def log(self, record: LogRecord) -> None:
        if not self._logs:
            return
        if "Traceback (most recent call last)" in record.message:
            self._tracebacks.append(record.message)
        self._console.print(_render.log_line(record))

    def state(self, run: FlowRun) -> None:
        tb = (run.state.details.traceback or "").strip()
        shown = bool(tb) and any(tb in message for message in self._tracebacks)
        self._console.print(_render.state_line(run, traceback=not shown))
