"""``sluice deployment ls|inspect|pause|resume|delete``.

A deployment is named ``FLOW/DEPLOYMENT`` (a bare ``FLOW`` works when that
flow has exactly one deployment) or given by ``--id``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from rich.markup import escape

from engine.client import Client
from shared.models import Deployment

from . import _parse, _render
from ._invoke import with_client

__all__ = ["deployments"]

deployments = typer.Typer(
    name="deployment",
    help="List, inspect, pause, resume and delete deployments.",
    no_args_is_help=True,
)

Name = Annotated[
    str | None,
    typer.Argument(
        metavar="FLOW/DEPLOYMENT",
        help="The deployment; a bare FLOW works when that flow has one deployment.",
        show_default=False,
    ),
]
Id = Annotated[
    str | None, typer.Option("--id", metavar="ID", help="The deployment's id, instead of a name.")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _ref(name: str | None, deployment_id: str | None) -> tuple[str | None, str | None]:
    if (name is None) == (deployment_id is None):
        raise typer.BadParameter("name the deployment as FLOW/DEPLOYMENT or give --id ID")
    if deployment_id is not None:
        try:
            return None, _parse.parse_deployment_id(deployment_id)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--id'") from None
    return name, None


@deployments.command("ls")
def ls(
    flow: Annotated[
        str | None, typer.Option("--flow", "-f", metavar="FLOW", help="Deployments of this flow.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag",
            "-t",
            metavar="TAG",
            help="Deployments carrying this tag (all given). Repeatable.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many.")
    ] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """List deployments (the newest version of each name), by name."""

    async def command(client: Client) -> None:
        page = await client.list_deployments(
            flow_name=flow, tags=tag or [], limit=limit, offset=offset
        )
        if as_json:
            _render.print_json(page)
            return
        if not page.deployments:
            _render.out().print("No deployments match.")
            return
        _render.out().print(_render.deployments_table(page.deployments))
        if page.next_offset is not None:
            _render.hint(f"More: add --offset {page.next_offset}")

    with_client(command)


@deployments.command("inspect")
def inspect(name: Name = None, deployment_id: Id = None, as_json: JsonFlag = False) -> None:
    """Show one deployment in full."""
    ref_name, ref_id = _ref(name, deployment_id)

    async def command(client: Client) -> None:
        deployment = await client.read_deployment(ref_name, id=ref_id)
        if as_json:
            _render.print_json(deployment)
        else:
            _render.out().print(_render.deployment_panel(deployment))

    with_client(command)


def _change(
    name: str | None,
    deployment_id: str | None,
    as_json: bool,
    action: Callable[[Client, str | None, str | None], Awaitable[Deployment]],
    verb: str,
) -> None:
    ref_name, ref_id = _ref(name, deployment_id)

    async def command(client: Client) -> None:
        deployment = await action(client, ref_name, ref_id)
        if as_json:
            _render.print_json(deployment)
        else:
            _render.out().print(
                f"Deployment [bold]{escape(deployment.full_name)}[/] {verb}.", soft_wrap=True
            )

    with_client(command)


@deployments.command("pause")
def pause(name: Name = None, deployment_id: Id = None, as_json: JsonFlag = False) -> None:
    """Pause a deployment's schedules; runs already created are not touched."""
    _change(
        name,
        deployment_id,
        as_json,
        lambda c, n, i: c.pause_deployment(n, id=i),
        "paused: its schedules create no runs until resumed",
    )


@deployments.command("resume")
def resume(name: Name = None, deployment_id: Id = None, as_json: JsonFlag = False) -> None:
    """Resume a paused deployment's schedules."""
    _change(
        name,
        deployment_id,
        as_json,
        lambda c, n, i: c.resume_deployment(n, id=i),
        "resumed",
    )


@deployments.command("delete")
def delete(name: Name = None, deployment_id: Id = None, as_json: JsonFlag = False) -> None:
    """Delete a deployment: by name every version of it, by --id that version.

    Its flow runs are kept.
    """
    ref_name, ref_id = _ref(name, deployment_id)

    async def command(client: Client) -> None:
        deleted = await client.delete_deployment(ref_name, id=ref_id)
        if as_json:
            _render.print_json(deleted)
        else:
            what = escape(ref_name) if ref_name else f"with id {deleted.id}"
            _render.out().print(f"Deleted deployment {what}.", soft_wrap=True)

    with_client(command)
