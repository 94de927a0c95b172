"""What the buttons do: cancel, retry, run a deployment, pause, resume.

Each is one call of the engine client, the same the CLI makes
(``sluice flow-run cancel|retry``, ``sluice deployment run|pause|resume``),
so the orchestrator's rules apply exactly as they do there. A refused
action comes back to the page it was made from with the orchestrator's
message; a Run form with bad input comes back with each problem beside its
field.

Every form goes through :func:`services.ui._auth.guard` first: refused in
read-only mode, refused when Origin (or Sec-Fetch-Site) says another site
sent it, and refused without the page's CSRF token, so a page elsewhere
cannot press these buttons in a user's browser.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from engine.client import Client
from shared.errors import SluiceError

from ._auth import guard
from ._context import deployment_id_of, run_id_of, ui_of
from ._params import field_errors, fields_for, read_form

__all__ = ["cancel", "pause", "resume", "retry", "run_deployment"]


async def _same_origin(request: Request) -> None:
    await guard(request, ui_of(request).access)


def _back(form: FormData, default: str, error: str | None = None) -> RedirectResponse:
    """Back to the page the form was on (a local path only), with an error if any."""
    target = form.get("next")
    if not isinstance(target, str) or not target.startswith("/") or target.startswith("//"):
        target = default
    if error is not None:
        target += ("&" if "?" in target else "?") + urlencode({"error": error})
    return RedirectResponse(target, status_code=303)


async def _on_run(request: Request, act: Callable[[Client, str], Awaitable[object]]) -> Response:
    """A run's button: do ``act``, then back to where the form came from (with any error)."""
    await _same_origin(request)
    ui = ui_of(request)
    run_id = run_id_of(request)
    form = await request.form()
    try:
        await act(ui.client, run_id)
    except SluiceError as exc:
        return _back(form, f"/runs/{run_id}", exc.message)
    return _back(form, f"/runs/{run_id}")


async def cancel(request: Request) -> Response:
    """As ``sluice flow-run cancel``."""
    return await _on_run(
        request,
        lambda client, run_id: client.cancel_flow_run(run_id, reason="cancelled from the web UI"),
    )


async def retry(request: Request) -> Response:
    """As ``sluice flow-run retry``: back to Scheduled (AwaitingRetry) with ``retry``."""
    return await _on_run(
        request,
        lambda client, run_id: client.retry_flow_run(
            run_id, message="retry requested from the web UI"
        ),
    )


async def run_deployment(request: Request) -> Response:
    await _same_origin(request)
    ui = ui_of(request)
    deployment = await ui.client.read_deployment(id=deployment_id_of(request))
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    fields, parameters = read_form(fields_for(deployment), values)
    run_name = values.get("run_name", "").strip()
    tags = [t.strip() for t in values.get("tags", "").split(",") if t.strip()]
    errors: list[str] = []
    if parameters is not None:
        try:
            run = await ui.client.create_flow_run(
                deployment_id=deployment.id,
                parameters=parameters or None,
                name=run_name or None,
                tags=tags,
            )
        except SluiceError as exc:
            fields, errors = field_errors(fields, exc)
        else:
            return RedirectResponse(f"/runs/{run.id}", status_code=303)
    return ui.render(
        "run_form.html",
        status_code=400,
        deployment=deployment,
        fields=fields,
        errors=errors,
        run_name=run_name,
        tags=values.get("tags", ""),
        section="deployments",
    )


async def _pause_or_resume(request: Request, *, pause: bool) -> Response:
    await _same_origin(request)
    ui = ui_of(request)
    form = await request.form()
    name = form.get("name")
    if not isinstance(name, str) or "/" not in name:
        raise HTTPException(400, "which deployment? (FLOW/DEPLOYMENT)")
    try:
        if pause:
            await ui.client.pause_deployment(name)
        else:
            await ui.client.resume_deployment(name)
    except SluiceError as exc:
        return _back(form, "/deployments", exc.message)
    return _back(form, "/deployments")


async def pause(request: Request) -> Response:
    return await _pause_or_resume(request, pause=True)


async def resume(request: Request) -> Response:
    return await _pause_or_resume(request, pause=False)
