"""The Starlette application: routes, static files, and how errors look.

``build_app`` takes a ready :class:`~services.ui._context.UI` (a connected
client and a running feed); :class:`services.ui.service.UIService` builds
both and serves the app with uvicorn.
"""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from shared.errors import Conflict, NotFound, RequestError, SluiceError, StackUnavailable

from . import _actions, _live, _login, _logs, _pages
from ._auth import AccessMiddleware, csrf_field, current_user
from ._context import UI, ui_of
from ._templates import HERE

__all__ = ["Gate", "build_app"]

_WAITING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sluice: waiting for NATS</title>
<meta http-equiv="refresh" content="5"></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Sluice is starting</h1>
<p>The web UI is waiting for NATS at <code>{url}</code>. This page reloads
by itself; it shows your runs as soon as the connection is made.</p>
<p>If it stays here, check that nats-server runs and that
<code>SLUICE_NATS_URL</code> (and the credentials) are right.</p>
</body></html>
"""


class Gate:
    """The ASGI app uvicorn serves: 503 with a page that says why until
    :attr:`app` is set (the UI is connected), then that app."""

    def __init__(self, nats_url: str) -> None:
        self.app: Starlette | None = None
        self._page = _WAITING_PAGE.format(url=escape(nats_url)).encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets here; lifespan is off
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"retry-after", b"5"),
                    (b"content-length", str(len(self._page)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": self._page})


def _status(exc: SluiceError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, RequestError):
        return 400
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, StackUnavailable):
        return 503
    return 500


async def _sluice_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SluiceError)
    return ui_of(request).render(
        "error.html", status_code=_status(exc), message=exc.message, code=exc.code, section=""
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return ui_of(request).render(
        "error.html", status_code=exc.status_code, message=exc.detail, code="", section=""
    )


async def _home(request: Request) -> Response:
    return RedirectResponse("/runs", status_code=307)


async def _stack_status(request: Request) -> Response:
    """Whether this server reaches the stack now; pages poll it to mark themselves stale."""
    problem = await ui_of(request).stack_problem()
    return JSONResponse(
        {"up": problem is None, "problem": problem}, status_code=200 if problem is None else 503
    )


def build_app(ui: UI) -> Starlette:
    routes = [
        Route("/", _home),
        Route("/runs", _pages.flow_runs),
        Route("/runs/live", _live.runs_events),
        Route("/runs/{run_id}", _pages.flow_run),
        Route("/runs/{run_id}/live", _live.run_events),
        Route("/runs/{run_id}/logs", _logs.logs_part),
        Route("/runs/{run_id}/cancel", _actions.cancel, methods=["POST"]),
        Route("/runs/{run_id}/retry", _actions.retry, methods=["POST"]),
        Route("/deployments", _pages.deployments),
        Route("/deployments/pause", _actions.pause, methods=["POST"]),
        Route("/deployments/resume", _actions.resume, methods=["POST"]),
        Route("/deployments/{deployment_id}", _pages.deployment),
        Route("/deployments/{deployment_id}/run", _pages.deployment_form),
        Route("/deployments/{deployment_id}/run", _actions.run_deployment, methods=["POST"]),
        Route("/runners", _pages.runners),
        Route("/login", _login.login_form),
        Route("/login", _login.login, methods=["POST"]),
        Route("/logout", _login.logout, methods=["POST"]),
        Route("/stack", _stack_status),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    ui.env.globals.update(
        csrf_field=csrf_field,
        current_user=current_user,
        read_only=ui.access.read_only,
        login=ui.access.login,
    )
    app = Starlette(
        routes=routes,
        exception_handlers={SluiceError: _sluice_error, HTTPException: _http_error},
        middleware=[Middleware(AccessMiddleware, access=ui.access)],
    )
    app.state.ui = ui
    return app
