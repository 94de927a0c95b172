"""``sluice run``: create a flow run of a deployment and optionally watch it to the end,
execute it here (``--execute``), or run a flow from local code (``--path``/``--module``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from engine._core.start import StartTasks
from engine.client import Client
from shared.models import FlowRun
from shared.states import StateType

from . import _options, _parse, _render
from ._follow import WatchOutput, follow_run
from ._invoke import EXIT_FAILURE, with_client
from ._local import execute_here, run_local
from ._resolve import complete_deployment

__all__ = ["run"]


def _usage(message: str, option: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{option}'")


def _start_time(start_in: str | None, start_at: str | None) -> datetime | None:
    if start_in is not None and start_at is not None:
        raise typer.BadParameter("give --start-in or --start-at, not both")
    try:
        if start_in is not None:
            return datetime.now(UTC) + _parse.parse_duration(start_in)
        if start_at is not None:
            return _parse.parse_start_at(start_at)
    except ValueError as exc:
        raise _usage(str(exc), "--start-in" if start_in is not None else "--start-at") from None
    return None


def _parameters(params: str | None, pairs: list[str]) -> dict[str, Any] | None:
    """``--params`` overlaid with each ``--param``; None when neither was given,
    so the deployment's defaults apply untouched."""
    merged: dict[str, Any] | None = None
    if params is not None:
        try:
            merged = _parse.parse_params_object(params)
        except ValueError as exc:
            raise _usage(str(exc), "--params") from None
    for pair in pairs:
        try:
            key, value = _parse.parse_param(pair)
        except ValueError as exc:
            raise _usage(str(exc), "--param") from None
        merged = {**(merged or {}), key: value}
    return merged


def _check_local(name: str | None, deployment_id: str | None, **given: object) -> None:
    """``--path``/``--module`` take no deployment and none of the deployment-run options."""
    if name is not None or deployment_id is not None:
        raise typer.BadParameter("give a deployment (--name/--id) or local code (--path/--module)")
    extra = [option for option, value in given.items() if value]
    if extra:
        raise typer.BadParameter(
            f"{', '.join(extra)} only apply to runs of deployments, not to --path/--module"
        )


def _print_created(run: FlowRun) -> None:
    console = _render.out()
    target = run.deployment_name or run.flow_name
    console.print(
        f"Created flow run [bold]{escape(run.name)}[/] of {escape(target)}",
        soft_wrap=True,
    )
    console.print(f"  id     {run.id}", soft_wrap=True)
    state = _render.state_text(run.state)
    console.print("  state  ", state, sep="", soft_wrap=True)
    console.print(f"  starts {_render.when(run.expected_start_time)}", soft_wrap=True)
    _render.hint(f"Inspect it with: sluice flow-run inspect {run.id}")


def _print_existing(run: FlowRun, *, as_json: bool) -> None:
    """A repeated idempotency key: the stack returned the run the key already names."""
    _render.err().print(
        f"flow run {escape(run.name)} ({run.id}) already exists for this key; "
        "the new parameters and start time were not applied",
        soft_wrap=True,
    )
    if not as_json:
        _render.hint(f"Inspect it with: sluice flow-run inspect {run.id}")


def _print_executing(run: FlowRun) -> None:
    console = _render.out()
    target = run.deployment_name or run.flow_name
    console.print(
        f"Executing flow run [bold]{escape(run.name)}[/] of {escape(target)} here",
        soft_wrap=True,
    )
    console.print(f"  id     {run.id}", soft_wrap=True)


def run(
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            metavar="FLOW/DEPLOYMENT",
            help="The deployment; a bare FLOW works when that flow has one deployment.",
            autocompletion=complete_deployment,
        ),
    ] = None,
    deployment_id: Annotated[
        str | None,
        typer.Option("--id", metavar="ID", help="The deployment's id, instead of --name."),
    ] = None,
    param: _options.Param = None,
    params: _options.Params = None,
    run_name: _options.RunName = None,
    start_in: _options.StartIn = None,
    start_at: _options.StartAt = None,
    idempotency_key: _options.IdempotencyKey = None,
    tag: _options.Tag = None,
    watch: _options.Watch = False,
    execute: Annotated[
        bool,
        typer.Option(
            "--execute",
            "-x",
            help="Execute the run here, without a runner (an agentless run); exit 0 only "
            "if it completed.",
        ),
    ] = False,
    path: Annotated[
        str | None,
        typer.Option(
            "--path",
            metavar="FILE[:FLOW]",
            help="Run a flow from a local file here (FLOW: variable or flow name; "
            "optional when the file has one flow).",
        ),
    ] = None,
    module: Annotated[
        str | None,
        typer.Option(
            "--module", "-m", metavar="MODULE[:FLOW]", help="Run a flow from a module here."
        ),
    ] = None,
    start_task: Annotated[
        list[str] | None,
        typer.Option(
            "--start-task",
            metavar="TASK",
            help="With --execute, --path or --module: run the flow from this task on "
            "(repeatable); earlier tasks reuse the results of --from-run.",
        ),
    ] = None,
    from_run: Annotated[
        str | None,
        typer.Option(
            "--from-run",
            metavar="RUN_ID",
            help="With --start-task: the earlier run of the flow whose results feed it.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run as JSON (the final run with --watch).")
    ] = False,
) -> None:
    """Create a flow run of a deployment, or run a flow from local code.

    With --watch, follow it to the end: exit status 0 when it completed, 1 when
    it failed, crashed or was cancelled. With --execute, run it in this process
    instead of a runner (same exit status). With --path or --module, run a flow
    from local code in this process, reported to the stack when SLUICE_NATS_URL
    is set (exit status 0 only when it completed).
    """
    parameters = _parameters(params, param or [])
    if path is not None or module is not None:
        if path is not None and module is not None:
            raise typer.BadParameter("give --path or --module, not both")
        _check_local(
            name,
            deployment_id,
            **{
                "--execute": execute,
                "--watch": watch,
                "--start-in": start_in,
                "--start-at": start_at,
                "--run-name": run_name,
                "--idempotency-key": idempotency_key,
                "--tag": tag,
            },
        )
        target = path if path is not None else module
        assert target is not None
        run_local(
            target,
            module=module is not None,
            parameters=parameters,
            as_json=as_json,
            start_tasks=start_task or [],
            from_run=from_run,
        )
        return
    start_from = None
    if start_task or from_run:
        if not execute:
            raise typer.BadParameter(
                "--start-task and --from-run apply to runs executed here (--execute, "
                "--path, --module); to run a deployment's finished run again from a task, "
                "use: sluice flow-run retry RUN --from-task TASK"
            )
        try:
            start_from = StartTasks(start_task or [], from_run=from_run)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    deployment, dep_id = _options.deployment_ref(
        name, deployment_id, how="with --name FLOW/DEPLOYMENT"
    )
    start = _start_time(start_in, start_at)
    if execute:
        if watch:
            raise typer.BadParameter("--execute already follows the run; leave out --watch")

        async def create_agentless(client: Client) -> FlowRun:
            return await client.create_flow_run(
                deployment,
                deployment_id=dep_id,
                parameters=parameters,
                name=run_name,
                scheduled_start_time=start,
                idempotency_key=idempotency_key,
                tags=tag or [],
                agentless=True,
            )

        announce = None if as_json else _print_executing
        execute_here(create_agentless, None, as_json=as_json, announce=announce, start=start_from)
        return

    request_id = str(uuid.uuid4())

    async def create(client: Client) -> FlowRun:
        created = await client.create_flow_run(
            deployment,
            deployment_id=dep_id,
            parameters=parameters,
            name=run_name,
            scheduled_start_time=start,
            idempotency_key=idempotency_key,
            tags=tag or [],
            request_id=request_id,
        )
        existing = created.created_by_request != request_id
        if existing:
            _print_existing(created, as_json=as_json)
        if as_json and not watch:
            _render.print_json(created)
        if not as_json and not existing:
            _print_created(created)
        if not watch:
            return created
        if as_json:  # one document: the run as it ended, printed below
            return await follow_run(client, created.id, on_log=lambda record: None)
        _render.hint("Watching it; Ctrl-C stops watching (the run goes on).")
        output = WatchOutput(_render.out())
        return await follow_run(client, created.id, on_log=output.log, on_state=output.state)

    final = with_client(create)
    if not watch:
        return
    if as_json:
        _render.print_json(final)
    else:
        _render.out().print(
            f"Flow run {escape(final.name)} ended ", _render.state_text(final.state), sep=""
        )
    if final.state.type is not StateType.COMPLETED:
        raise typer.Exit(EXIT_FAILURE)
