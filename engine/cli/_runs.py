"""``sluice flow-run ls|inspect|watch|logs|cancel|retry|delete``.

Every command that takes a run takes its id, a unique prefix of its id, or
its name (``_resolve``).
"""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape

from engine.client import Client
from shared.errors import SluiceError
from shared.models import FlowRun

from . import _parse, _render
from ._inspect import inspect
from ._invoke import fail, with_client
from ._local import execute_here
from ._logs import logs, watch
from ._resolve import check_states, complete_deployment, complete_state, resolve_run

__all__ = ["flow_runs"]

flow_runs = typer.Typer(
    name="flow-run",
    help="List, inspect, watch, cancel, retry and delete flow runs, and read their logs.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _when(text: str | None, option: str) -> datetime | None:
    """``--since``/``--until``: an ISO 8601 time, or a duration meaning that long ago."""
    if text is None:
        return None
    try:
        return datetime.now(UTC) - _parse.parse_duration(text)
    except ValueError:
        pass
    try:
        return _parse.parse_start_at(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither an ISO 8601 time (2026-11-20T08:00) nor a duration "
            "ago (30m, 2h, 1d)",
            param_hint=f"'{option}'",
        ) from None


async def _suggest_flow(client: Client, flow: str) -> None:
    """A hint when ``--flow`` names no flow a deployment knows but one is close."""
    page = await client.list_deployments(limit=1000)
    known = sorted({d.flow_name for d in page.deployments})
    if flow in known:
        return
    close = difflib.get_close_matches(flow, known, n=3, cutoff=0.6)
    if close:
        _render.hint("Did you mean " + " or ".join(f"--flow {c}" for c in close) + "?")


def _states(given: list[str] | None) -> list[str]:
    try:
        return check_states(given or [])
    except SluiceError as exc:
        fail(exc)


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


RunRef = Annotated[
    str,
    typer.Argument(metavar="RUN", help="The flow run: its id, a unique prefix of it, or its name."),
]


@flow_runs.command("ls")
def ls(
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            "-s",
            metavar="STATE",
            help="A state type (FAILED) or name (Late); any matches. Repeatable.",
            autocompletion=complete_state,
        ),
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment",
            "-d",
            metavar="FLOW/DEPLOYMENT",
            help="Runs of this deployment (or id).",
            autocompletion=complete_deployment,
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
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="TIME",
            help="Runs expected to start at or after TIME: ISO 8601, or a duration ago (2h).",
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            metavar="TIME",
            help="Runs expected to start before TIME: ISO 8601, or a duration ago (30m).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="At most this many.")] = 20,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """List flow runs, newest first (by expected start time)."""
    deployment = _deployment_filter(deployment)
    states = _states(state)
    start, end = _when(since, "--since"), _when(until, "--until")
    if start is not None and end is not None and start >= end:
        raise typer.BadParameter("--since must be before --until")

    async def command(client: Client) -> None:
        page = await client.list_flow_runs(
            states=states,
            deployment=deployment,
            flow_name=flow,
            tags=tag or [],
            since=start,
            until=end,
            limit=limit,
            offset=offset,
        )
        if as_json:
            _render.print_json(page)
            return
        if not page.flow_runs:
            _render.out().print("No flow runs match.")
            if flow is not None:
                await _suggest_flow(client, flow)
            return
        _render.out().print(_render.flow_runs_table(page.flow_runs))
        if page.next_offset is not None:
            _render.hint(f"More: add --offset {page.next_offset}")

    with_client(command)


flow_runs.command("inspect")(inspect)
flow_runs.command("watch")(watch)
flow_runs.command("logs")(logs)


@flow_runs.command("cancel")
def cancel(
    run_ref: RunRef,
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

    async def command(client: Client) -> None:
        run = await client.cancel_flow_run(await resolve_run(client, run_ref), reason=reason)
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


@flow_runs.command("retry")
def retry(
    run_ref: RunRef,
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

    async def command(client: Client) -> FlowRun:
        run_id = await resolve_run(client, run_ref)
        # --execute: marked agentless, so no runner serving the queue takes it first.
        return await client.retry_flow_run(run_id, from_task=from_task, agentless=execute)

    retried = with_client(command)
    if not as_json or not execute:
        _print_retried(retried, as_json=as_json, execute=execute)
    if execute:
        execute_here(None, retried.id, as_json=as_json)


@flow_runs.command("delete")
def delete(
    run_ref: RunRef,
    reason: Annotated[
        str | None,
        typer.Option("--reason", metavar="TEXT", help="Recorded in the run's deletion event."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Delete a flow run that has not started yet or has finished.

    The run leaves the run list and can no longer be read; a run that is
    under way must be cancelled first. Its idempotency key is freed, so a
    create with that key makes a new run.
    """

    async def command(client: Client) -> FlowRun:
        run = await client.read_flow_run(await resolve_run(client, run_ref))
        await client.delete_flow_run(run.id, reason=reason)
        return run

    run = with_client(command)
    if as_json:
        _render.print_json({"id": run.id, "deleted": True})
        return
    _render.out().print(f"Deleted flow run [bold]{escape(run.name)}[/] ({run.id}).", soft_wrap=True)


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
