"""The pages: flow runs, one run, deployments, the Run form, runners.

Each handler reads through the engine client or a public bucket or stream
(:mod:`services.ui._reads`) and renders a template. ``?part=1`` renders only
the part of a page the browser refreshes in place.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from engine._stack.diagnose import why_not_started
from shared.errors import NotFound
from shared.messages import SlotLease
from shared.models import Deployment, FlowRun
from shared.states import DEFAULT_NAMES, LATE, StateType

from . import _format, _reads
from ._context import UI, ui_of
from ._live import filters_of
from ._params import fields_for

__all__ = [
    "deployment_form",
    "deployment_id_of",
    "deployments",
    "flow_run",
    "flow_runs",
    "run_id_of",
    "runners",
]

#: What the state filter offers: every type, and the names users look for.
STATE_CHOICES = [t.value for t in StateType] + [LATE, "AwaitingRetry", "Retrying", "Cached"]


@dataclass(frozen=True)
class DeploymentRow:
    deployment: Deployment
    slots: list[SlotLease] = field(default_factory=list)
    next_runs: list[FlowRun] = field(default_factory=list)


def run_id_of(request: Request) -> str:
    text = request.path_params["run_id"]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise HTTPException(404, f"{text!r} is not a flow run id") from None


def _part(request: Request) -> bool:
    return request.query_params.get("part") == "1"


async def _all_deployments(ui: UI) -> list[Deployment]:
    out: list[Deployment] = []
    offset: int | None = 0
    while offset is not None and len(out) < 1000:
        page = await ui.client.list_deployments(limit=200, offset=offset)
        out.extend(page.deployments)
        offset = page.next_offset
    return out


async def flow_runs(request: Request) -> Response:
    ui = ui_of(request)
    states, deployment, tags = filters_of(request)
    try:
        offset = max(0, int(request.query_params.get("offset") or 0))
    except ValueError:
        offset = 0
    page = await ui.client.list_flow_runs(
        states=states, deployment=deployment, tags=tags, limit=ui.page_size, offset=offset
    )
    query = request.url.query

    def page_url(to: int | None) -> str | None:
        if to is None:
            return None
        args = {"state": states, "deployment": deployment or "", "tag": ",".join(tags)}
        return "/runs?" + urlencode({**args, "offset": to}, doseq=True)

    return ui.render(
        "runs.html",
        page=page,
        runs=page.flow_runs,
        states=states,
        deployment=deployment,
        tag=", ".join(tags),
        state_choices=STATE_CHOICES,
        deployments=sorted(d.full_name for d in await _all_deployments(ui)),
        prev_url=page_url(max(0, offset - ui.page_size) if offset else None),
        next_url=page_url(page.next_offset),
        live_url="/runs/live" + (f"?{query}" if query else ""),
        back=f"/runs?{query}" if query else "/runs",
        error=request.query_params.get("error"),
        section="runs",
    )


async def flow_run(request: Request) -> Response:
    ui = ui_of(request)
    client = ui.client
    run = await client.read_flow_run(run_id_of(request))
    parent = None
    if run.parent_flow_run_id:
        with contextlib.suppress(NotFound):
            parent = await client.read_flow_run(run.parent_flow_run_id)
    children = (await client.list_flow_runs(parent_flow_run_id=run.id, limit=100)).flow_runs
    context: dict[str, Any] = dict(
        run=run,
        waiting=await why_not_started(client, run),
        timeline=await _reads.timeline(client, run),
        tasks=await _reads.task_runs(client, run),
        parent=parent,
        children=children,
        default_names=DEFAULT_NAMES,
        back=f"/runs/{run.id}",
    )
    if _part(request):
        return ui.render("_run_detail.html", **context)
    return ui.render("run.html", error=request.query_params.get("error"), section="runs", **context)


async def deployments(request: Request) -> Response:
    ui = ui_of(request)
    now = _format.now()
    rows = []
    for d in await _all_deployments(ui):
        rows.append(
            DeploymentRow(
                deployment=d,
                slots=await _reads.slots_in_use(ui.client, d),
                next_runs=await _reads.next_runs(ui.client, d, now) if d.schedules else [],
            )
        )
    rows.sort(key=lambda r: r.deployment.full_name)
    template = "_deployments_table.html" if _part(request) else "deployments.html"
    return ui.render(
        template, rows=rows, error=request.query_params.get("error"), section="deployments"
    )


async def deployment_form(request: Request) -> Response:
    ui = ui_of(request)
    deployment = await ui.client.read_deployment(id=deployment_id_of(request))
    return ui.render(
        "run_form.html",
        deployment=deployment,
        fields=fields_for(deployment),
        errors=[],
        run_name="",
        tags="",
        section="deployments",
    )


def deployment_id_of(request: Request) -> str:
    text = request.path_params["deployment_id"]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise HTTPException(404, f"{text!r} is not a deployment id") from None


async def runners(request: Request) -> Response:
    ui = ui_of(request)
    now = _format.now()
    views = await _reads.read_runners(ui.client, now)
    template = "_runners_table.html" if _part(request) else "runners.html"
    return ui.render(template, runners=views, now=now, section="runners")
