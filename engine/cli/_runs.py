"""``sluice flow-run ls|inspect|cancel|logs|retry``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from engine._stack.diagnose import why_not_started
from engine.client import Client
from shared.messages import LogRecord
from shared.models import FlowRun

from . import _parse, _render
from ._follow import follow_run
from ._invoke import with_client
from ._local import execute_here

__all__ = ["flow_runs"]

flow_runs = typer.Typer(
    name="flow-run",
    help="List, inspect, cancel, retry and read the logs of flow runs.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _run_id(text: str) -> str:
    try:
        return _parse.parse_run_id(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'ID'") from None


def _deployment_filter(value: str | None) -> str | None:
    """``FLOW/DEPLOYMENT`` or an id. The stack takes any other text for an id and
    matches nothing, so a bare flow name is refused here with a pointer to --flow."""
    if value is None or "/" in value:
        return value
    try:
        return _parse.parse_deployment_id(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither FLOW/DEPLOYMENT nor a deployment id; "
            "for every run of a flow use --flow",
            param_hint="'--deployment'",
        ) from None


RunId = Annotated[str, typer.Argument(metavar="ID", help="The flow run's id.")]


@flow_runs.command("ls")
def ls(
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            metavar="STATE",
            help="A state type (FAILED) or name (Late); any matches. Repeatable.",
        ),
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment", "-d", metavar="FLOW/DEPLOYMENT", help="Runs of this deployment (or id)."
        ),
    ] = None,
    flow: Annotated[
        str | None, typer.Option("--flow", "-f", metavar="FLOW", help="Runs of this flow.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", "-t", metavar="TAG", help="Runs carrying this tag (all given). Repeatable."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """List flow runs, newest first (by expected start time)."""
    deployment = _deployment_filter(deployment)

    async def command(client: Client) -> None:
        page = await client.list_flow_runs(
            states=state or [],
            deployment=deployment,
            flow_name=flow,
            tags=tag or [],
            limit=limit,
            offset=offset,
        )
        if as_json:
            _render.print_json(page)
            return
        if not page.flow_runs:
            _render.out().print("No flow runs match.")
            return
        _render.out().print(_render.flow_runs_table(page.flow_runs))
        if page.next_offset is not None:
            _render.hint(f"More: add --offset {page.next_offset}")

    with_client(command)


@flow_runs.command("inspect")
def inspect(run_id: RunId, as_json: JsonFlag = False) -> None:
    """Show one flow run in full."""
    canonical = _run_id(run_id)

    async def command(client: Client) -> None:
        run = await client.read_flow_run(canonical)
        if as_json:
            _render.print_json(run)
        else:
            waiting = await why_not_started(client, run)
            _render.out().print(_render.flow_run_panel(run, waiting))

    with_client(command)


@flow_runs.command("cancel")
def cancel(
    run_id: RunId,
    reason: Annotated[
        str | None,
        typer.Option("--reason", metavar="TEXT", help="Recorded as the state's message."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Cancel a flow run: at once if it has not started, else via Cancelling.

    Cancelling a run that is already cancelled (or being cancelled) is harmless;
    a run that already finished otherwise is an error.
    """
    canonical = _run_id(run_id)

    async def command(client: Client) -> None:
        run = await client.cancel_flow_run(canonical, reason=reason)
        if as_json:
            _render.print_json(run)
            return
        console = _render.out()
        console.print(
            f"Flow run [bold]{escape(run.name)}[/] is ",
            _render.state_text(run.state),
            sep="",
            soft_wrap=True,
        )

    with_client(command)


@flow_runs.command("logs")
def logs(
    run_id: RunId,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new lines until the run ends."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print JSON: an array, or one object per line with --follow."),
    ] = False,
) -> None:
    """Print a flow run's log lines, oldest first."""
    canonical = _run_id(run_id)

    def show(record: LogRecord) -> None:
        if as_json:
            _render.print_json(record)
        else:
            _render.out().print(_render.log_line(record))

    async def command(client: Client) -> None:
        await client.read_flow_run(canonical)  # an unknown id is an error, not silence
        if follow:
            await follow_run(client, canonical, on_log=show)
            return
        records = [record async for record in client.logs(canonical)]
        if as_json:
            _render.print_json(records)
        else:
            for record in records:
                show(record)
            if not records:
                _render.err().print("No log lines yet.")

    with_client(command)


@flow_runs.command("retry")
def retry(
    run_id: RunId,
    from_task: Annotated[
        str | None,
        typer.Option(
            "--from-task",
            metavar="NAME",
            help="Run this task (a task name, key or run name) and every task after it "
            "again; earlier tasks reuse their results.",
        ),
    ] = None,
    execute: Annotated[
        bool,
        typer.Option("--execute", "-x", help="Execute the retry here instead of by a runner."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Run a finished flow run again: tasks that completed keep their results.

    The run goes back to Scheduled (AwaitingRetry); a runner picks it up, or
    --execute runs it here. Tasks whose results an earlier attempt kept are not
    run again (they end Resumed), except from --from-task on.
    """
    canonical = _run_id(run_id)

    async def command(client: Client) -> FlowRun:
        # --execute: marked agentless, so no runner serving the queue takes it first.
        return await client.retry_flow_run(canonical, from_task=from_task, agentless=execute)

    retried = with_client(command)
    if not as_json or not execute:
        _print_retried(retried, as_json=as_json, execute=execute)
    if execute:
        execute_here(None, retried.id, as_json=as_json)


def _print_retried(run: FlowRun, *, as_json: bool, execute: bool) -> None:
    if as_json:
        _render.print_json(run)
        return
    console = _render.out()
    console.print(
        f"Flow run [bold]{escape(run.name)}[/] is ",
        _render.state_text(run.state),
        sep="",
        soft_wrap=True,
    )
    if run.state.message:
        console.print(f"  {escape(run.state.message)}", soft_wrap=True)
    if execute:
        return
    if run.agentless or run.deployment_id is None:
        _render.hint(
            f"No runner takes this run; execute it with: sluice flow-run retry "
            f"{run.id} --execute, or python -m engine --flow-run-id {run.id}"
        )
    else:
        _render.hint(f"A runner will pick it up; follow it with: sluice flow-run logs -f {run.id}")
