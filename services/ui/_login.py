"""The login page and logging out (only routed when a login is configured)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ._auth import guard, session_cookie
from ._context import ui_of

__all__ = ["login", "login_form", "logout"]


def _local(target: object) -> str:
    """Only a path on this server (no open redirect)."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//"):
        return target
    return "/runs"


async def login_form(request: Request) -> Response:
    ui = ui_of(request)
    if not ui.access.login:
        return RedirectResponse("/runs", status_code=303)
    return ui.render(
        "login.html",
        target=_local(request.query_params.get("next")),
        user="",
        failed=False,
        section="",
    )


async def login(request: Request) -> Response:
    ui = ui_of(request)
    if not ui.access.login:
        return RedirectResponse("/runs", status_code=303)
    form = await guard(request, ui.access, action=False)
    user = str(form.get("user") or "")
    target = _local(form.get("next"))
    if not ui.access.check(user, str(form.get("password") or "")):
        return ui.render(
            "login.html", status_code=401, target=target, user=user, failed=True, section=""
        )
    response = RedirectResponse(target, status_code=303)
    secure = request.url.scheme == "https"
    response.headers.append("set-cookie", session_cookie(ui.access, user, secure=secure))
    return response


async def logout(request: Request) -> Response:
    ui = ui_of(request)
    await guard(request, ui.access, action=False)
    response = RedirectResponse("/login" if ui.access.login else "/runs", status_code=303)
    secure = request.url.scheme == "https"
    response.headers.append("set-cookie", session_cookie(ui.access, None, secure=secure))
    return response
