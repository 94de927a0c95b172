"""The pages: flow runs, one run, deployments, the Run form, runners.

Each handler reads through the engine client or a public bucket or stream
(:mod:`services.ui._reads`) and renders a template. ``?part=1`` renders only
the part of a page the browser refreshes in place.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import timedelta
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
from ._context import UI, deployment_id_of, run_id_of, ui_of
from ._format import AWAITING_SLOT
from ._gantt import attempts_of, layout
from ._live import row_context
from ._logs import DEFAULT_LINES, LEVELS, LogFilter, lines_of, log_page
from ._params import fields_for
from ._runlist import RANGE_LABELS, RunQuery, activity, held_back

__all__ = [
    "deployment",
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
    query = RunQuery.of(request)
    now = _format.now()
    page = await query.page(ui.client, now, ui.page_size)
    other = await query.count_other_tab(ui.client, now)
    recent_count, upcoming_count = (other, page.total) if query.upcoming else (page.total, other)
    prev = max(0, query.offset - ui.page_size) if query.offset else None
    return ui.render(
        "runs.html",
        page=page,
        runs=page.flow_runs,
        query=query,
        states=query.states,
        deployment=query.deployment,
        tag=", ".join(query.tags),
        state_choices=STATE_CHOICES,
        ranges=RANGE_LABELS,
        recent_count=recent_count or 0,
        upcoming_count=upcoming_count or 0,
        chart=None if query.upcoming else await activity(ui.client, query, now),
        deployments=sorted(d.full_name for d in await _all_deployments(ui)),
        prev_url=query.url(offset=prev) if prev is not None else None,
        next_url=query.url(offset=page.next_offset) if page.next_offset else None,
        live_url="/runs/live" + (f"?{request.url.query}" if request.url.query else ""),
        back=query.url(),
        error=request.query_params.get("error"),
        section="runs",
        **await row_context(ui, page.flow_runs),
    )


async def flow_run(request: Request) -> Response:
    ui = ui_of(request)
    client = ui.client
    run = await client.read_flow_run(run_id_of(request))
    now = _format.now()
    parent = None
    if run.parent_flow_run_id:
        with contextlib.suppress(NotFound):
            parent = await client.read_flow_run(run.parent_flow_run_id)
    children = (await client.list_flow_runs(parent_flow_run_id=run.id, limit=100)).flow_runs
    timeline = await _reads.timeline(client, run)
    tasks = await _reads.task_runs(client, run)
    held = await held_back(client, [run], now)
    short = run.start_time is not None and (run.end_time or now) - run.start_time < timedelta(
        minutes=1
    )
    context: dict[str, Any] = dict(
        run=run,
        label=AWAITING_SLOT if run.id in held else None,
        waiting=await why_not_started(client, run),
        timeline=timeline,
        run_attempts=[a.seconds(now) for a in attempts_of(e.state for e in timeline)],
        tasks=tasks,
        gantt=layout(tasks, now),
        precise=short,
        now=now,
        parent=parent,
        children=children,
        default_names=DEFAULT_NAMES,
        back=f"/runs/{run.id}",
    )
    if _part(request):
        return ui.render("_run_detail.html", **context)
    wanted = LogFilter.of(request)
    lines = lines_of(request)
    logs = await log_page(client.nc, run.id, wanted, limit=lines)
    live = {"after": logs.last_seq, **wanted.query()}
    paging = {**wanted.query(), **({"lines": str(lines)} if lines != DEFAULT_LINES else {})}
    return ui.render(
        "run.html",
        error=request.query_params.get("error"),
        section="runs",
        logs=logs,
        log_filter=wanted,
        log_levels=list(LEVELS),
        log_query=urlencode(wanted.query()),
        earlier_query=urlencode(paging),
        log_lines=lines if lines != DEFAULT_LINES else None,
        live_url=f"/runs/{run.id}/live?" + urlencode(live),
        **context,
    )


async def deployment(request: Request) -> Response:
    """One deployment: what it runs, with which parameters, when, and its runs."""
    ui = ui_of(request)
    found = await ui.client.read_deployment(id=deployment_id_of(request))
    now = _format.now()
    recent = await ui.client.list_flow_runs(
        deployment=found.id, until=now, limit=ui.page_size, count=True
    )
    upcoming = await RunQuery(deployment=found.id, upcoming=True).page(ui.client, now, 10)
    runs = recent.flow_runs + upcoming.flow_runs
    return ui.render(
        "deployment.html",
        d=found,
        row=DeploymentRow(
            deployment=found,
            slots=await _reads.slots_in_use(ui.client, found),
            next_runs=upcoming.flow_runs[:3],
        ),
        recent=recent,
        upcoming=upcoming,
        back=f"/deployments/{found.id}",
        error=request.query_params.get("error"),
        section="deployments",
        **await row_context(ui, runs),
    )


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
    if ui.access.read_only:
        raise HTTPException(403, "this web UI is read-only (SLUICE_UI_READ_ONLY)")
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


async def runners(request: Request) -> Response:
    ui = ui_of(request)
    now = _format.now()
    views = _reads.with_lost(await _reads.read_runners(ui.client, now), ui.runners_seen, now)
    template = "_runners_table.html" if _part(request) else "runners.html"
    return ui.render(template, runners=views, now=now, section="runners")
