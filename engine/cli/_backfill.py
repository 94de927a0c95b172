"""``sluice deployment backfill FLOW/DEPLOYMENT --from TIME --to TIME``.

Asks the scheduler (``deployment.backfill``; it owns schedules) to create the
runs a deployment's active schedules would have created between two times.
The scheduler uses the same idempotency keys as for scheduled runs, so a
slot that already has a run keeps it, and backfilling twice creates nothing
new. Registered on the ``deployment`` app by ``_deployments``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape

from engine.client import Client
from shared import names
from shared.connection import request
from shared.errors import StackUnavailable
from shared.messages import BackfillDeployment, BackfillReply

from . import _parse, _render
from ._invoke import with_client

__all__ = ["backfill"]

#: A backfill creates up to a thousand runs, one request each; give it time.
TIMEOUT = 120.0


def _time(text: str, option: str) -> datetime:
    try:
        return _parse.parse_start_at(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None


def backfill(
    name: Annotated[
        str | None,
        typer.Argument(metavar="FLOW/DEPLOYMENT", help="The deployment.", show_default=False),
    ] = None,
    deployment_id: Annotated[
        str | None, typer.Option("--id", metavar="ID", help="The deployment's id, instead.")
    ] = None,
    start: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="TIME",
            help="First slot to fill, ISO 8601 (no offset: UTC).",
            show_default=False,
        ),
    ] = "",
    end: Annotated[
        str,
        typer.Option("--to", metavar="TIME", help="Last slot to fill, included (default: now)."),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
) -> None:
    """Create the runs a deployment's schedules missed between --from and --to.

    Slots that already have a run keep it; slots the scheduler skipped (catch-up
    window, overlap policy) get one. Runs in the past start at once. Needs the
    scheduler (it runs in `sluice dev`).
    """
    if (name is None) == (deployment_id is None):
        raise typer.BadParameter("name the deployment as FLOW/DEPLOYMENT or give --id ID")
    if not start:
        raise typer.BadParameter("give the first slot with --from TIME", param_hint="'--from'")
    ref_id = None
    if deployment_id is not None:
        try:
            ref_id = _parse.parse_deployment_id(deployment_id)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--id'") from None
    req = BackfillDeployment(
        name=name,
        id=ref_id,
        start=_time(start, "--from"),
        end=_time(end, "--to") if end else None,
    )

    async def command(client: Client) -> BackfillReply:
        try:
            return await request(
                client.nc, names.DEPLOYMENT_BACKFILL, req, BackfillReply, timeout=TIMEOUT
            )
        except StackUnavailable as exc:
            raise StackUnavailable(
                f"{exc.message} (backfill is served by the scheduler: run "
                "`python -m services.scheduler`, or `sluice dev`)"
            ) from None

    reply = with_client(command)
    if as_json:
        _render.print_json(reply)
        return
    console = _render.out()
    span = f"{reply.start.isoformat()} .. {reply.end.isoformat()}"
    if not reply.runs:
        console.print(f"No slot of {escape(reply.deployment)} falls in {span}.", soft_wrap=True)
        return
    count = f"{len(reply.runs)} slot{'s' if len(reply.runs) != 1 else ''}"
    console.print(f"Backfilled {count} of {escape(reply.deployment)} ({span}):", soft_wrap=True)
    for run in reply.runs:
        console.print(f"  {run.slot.isoformat()}  {run.flow_run_id}  {escape(run.state)}")
    _render.hint(f"Watch one with: sluice flow-run inspect {reply.runs[-1].flow_run_id}")
