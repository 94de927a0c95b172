"""``sluice deployment create|run|ls|inspect|pause|resume|delete``.

A deployment is named ``FLOW/DEPLOYMENT`` (a bare ``FLOW`` works when that
flow has exactly one deployment) or given by ``--id``. ``create`` imports a
spec file (user code) in this process before it connects; ``run`` is
``sluice run`` with the deployment as an argument, and shares its code.
"""

from __future__ import annotations

import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from engine.client import Client
from engine.deployments import RunnerDeployment, load_specs
from shared.errors import SluiceError
from shared.models import Deployment

from . import _options, _render
from ._backfill import backfill
from ._invoke import fail, with_client
from ._resolve import complete_deployment
from ._run import run as run_command

__all__ = ["deployments"]

deployments = typer.Typer(
    name="deployment",
    help="Create, run, list, inspect, pause, resume and delete deployments.",
    no_args_is_help=True,
)
deployments.command("backfill")(backfill)

Name = Annotated[
    str | None,
    typer.Argument(
        metavar="FLOW/DEPLOYMENT",
        help="The deployment; a bare FLOW works when that flow has one deployment.",
        show_default=False,
        autocompletion=complete_deployment,
    ),
]
Id = Annotated[
    str | None, typer.Option("--id", metavar="ID", help="The deployment's id, instead of a name.")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _ref(name: str | None, deployment_id: str | None) -> tuple[str | None, str | None]:
    return _options.deployment_ref(name, deployment_id, how="as FLOW/DEPLOYMENT")


def _load(file: Path) -> list[RunnerDeployment]:
    """The deployments ``file`` declares; any failure exits 1 with what went wrong."""
    try:
        return load_specs(file)
    except ValueError as exc:  # no specs, a flow that cannot be found, ...
        fail(SluiceError(str(exc)))
    except Exception as exc:  # the spec file (or code it imports) raised
        where = ""
        frames = traceback.extract_tb(exc.__traceback__)
        if frames and not isinstance(exc, SyntaxError):  # a SyntaxError names its line
            where = f" (at {frames[-1].filename}:{frames[-1].lineno})"
        fail(SluiceError(f"could not load {file}: {type(exc).__name__}: {exc}{where}"))


@deployments.command("create")
def create(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="A Python file declaring DeploymentSpec (or flow.to_deployment) values.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    bundle: Annotated[
        bool,
        typer.Option(
            "--bundle",
            help="Ship the file's folder to runners through the stack's bundle store "
            "(.gitignore and .sluiceignore apply), so runners need no copy of the code.",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Register every deployment a spec file declares.

    The file runs here, in this process, to find its deployments; entrypoints
    are recorded relative to the file's folder. Registering the same name and
    version again updates that deployment; a new version is kept beside it.
    With --bundle (or bundle=True in a spec), the folder is packed and stored
    once per content: unchanged code makes no new bundle.
    """
    specs = _load(file)
    if bundle:
        for spec in specs:
            spec.bundle = True

    async def command(client: Client) -> list[Deployment]:
        registered = []
        for spec in specs:
            try:
                registered.append(await spec.register(client))
            except SluiceError as exc:
                done = ", ".join(d.full_name for d in registered) or "none"
                message = f"could not register {spec.full_name}: {exc.message} (registered: {done})"
                raise SluiceError(message, details=exc.details) from exc
        return registered

    registered = with_client(command)
    if as_json:
        _render.print_json(registered)
        return
    count = f"{len(registered)} deployment{'s' if len(registered) != 1 else ''}"
    _render.out().print(f"Registered {count} from {escape(str(file))}:", soft_wrap=True)
    _render.out().print(_render.deployments_table(registered))
    _render.hint(f"Run one with: sluice deployment run {registered[0].full_name}")


@deployments.command("run")
def run(
    name: Name = None,
    deployment_id: Id = None,
    param: _options.Param = None,
    params: _options.Params = None,
    run_name: _options.RunName = None,
    start_in: _options.StartIn = None,
    start_at: _options.StartAt = None,
    idempotency_key: _options.IdempotencyKey = None,
    tag: _options.Tag = None,
    watch: _options.Watch = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run as JSON (the final run with --watch).")
    ] = False,
) -> None:
    """Create a flow run of a deployment, as sluice run --name does.

    With --watch, follow it to the end: exit status 0 when it completed, 1 when
    it failed, crashed or was cancelled.
    """
    ref_name, ref_id = _ref(name, deployment_id)
    run_command(
        name=ref_name,
        deployment_id=ref_id,
        param=param,
        params=params,
        run_name=run_name,
        start_in=start_in,
        start_at=start_at,
        idempotency_key=idempotency_key,
        tag=tag,
        watch=watch,
        as_json=as_json,
    )


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
    """Pause a deployment's schedules and remove the upcoming runs they created.

    Runs created by hand (sluice run, the UI, the API) are never touched, and
    runs already started go on. Resume creates the schedules' upcoming runs
    again.
    """
    _change(
        name,
        deployment_id,
        as_json,
        lambda c, n, i: c.pause_deployment(n, id=i),
        "paused: its schedules' upcoming runs are removed and none are created until resumed",
    )


@deployments.command("resume")
def resume(name: Name = None, deployment_id: Id = None, as_json: JsonFlag = False) -> None:
    """Resume a paused deployment's schedules: their upcoming runs are created again."""
    _change(
        name,
        deployment_id,
        as_json,
        lambda c, n, i: c.resume_deployment(n, id=i),
        "resumed: its schedules' upcoming runs are created again",
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
