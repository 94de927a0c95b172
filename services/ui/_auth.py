"""Who may use the web UI: an optional login, CSRF tokens on every form, a read-only mode.

The UI acts with the operator's rights (it cancels, retries, pauses and
starts runs), so whoever reaches its port could press its buttons. This
module closes that:

- **Login** (``SLUICE_UI_PASSWORD`` for one user, named by ``SLUICE_UI_USER``,
  ``admin`` by default; or ``SLUICE_UI_USERS``, ``name:hash`` pairs separated
  by commas, hashes made by ``python -m services.ui --hash-password``). A
  signed, HttpOnly session cookie follows a successful login; every page,
  stream and form then needs it. Without either variable there is no login.
- **CSRF**: each browser gets a random ``sluice_csrf`` cookie; each form
  carries an HMAC of it under the server's secret, and a POST without the
  matching value is refused. A page elsewhere can neither read the cookie
  nor compute the token.
- **Read-only** (``SLUICE_UI_READ_ONLY=1``): pages only; every POST is refused.

The signing secret is ``SLUICE_UI_SECRET`` or, without it, random per
process (sessions then end when the UI restarts).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import quote, urlsplit

from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ENV_VARS",
    "Access",
    "AccessMiddleware",
    "csrf_field",
    "guard",
    "hash_password",
    "verify_password",
]

#: The variables :meth:`Access.from_env` reads.
ENV_VARS = frozenset(
    {
        "SLUICE_UI_USER",
        "SLUICE_UI_PASSWORD",
        "SLUICE_UI_USERS",
        "SLUICE_UI_SECRET",
        "SLUICE_UI_READ_ONLY",
    }
)
SESSION_COOKIE = "sluice_session"
CSRF_COOKIE = "sluice_csrf"
SESSION_SECONDS = 12 * 3600
_ITERATIONS = 200_000
_TRUE = {"1", "true", "yes", "on"}
_OPEN_PATHS = ("/login", "/static/", "/stack")

_csrf_token: ContextVar[str] = ContextVar("sluice_csrf_token", default="")
_user: ContextVar[str | None] = ContextVar("sluice_user", default=None)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` (base64), for ``SLUICE_UI_USERS``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITERATIONS)
    b64 = base64.b64encode
    return f"pbkdf2_sha256${_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` value (False if malformed)."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        found = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
        return hmac.compare_digest(found, base64.b64decode(digest))
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """The UI's access rules; :meth:`from_env` reads them from ``SLUICE_UI_*``."""

    users: Mapping[str, str] = field(default_factory=dict)
    """User name -> password hash; empty: no login."""
    read_only: bool = False
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def login(self) -> bool:
        return bool(self.users)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Access:
        """Raises ValueError for a malformed ``SLUICE_UI_USERS``."""
        env = os.environ if env is None else env
        users: dict[str, str] = {}
        for item in (env.get("SLUICE_UI_USERS") or "").split(","):
            if not item.strip():
                continue
            name, sep, hashed = item.strip().partition(":")
            if not sep or not name or not hashed.startswith("pbkdf2_sha256$"):
                raise ValueError(
                    "SLUICE_UI_USERS must be NAME:HASH pairs separated by commas, hashes made "
                    "by `python -m services.ui --hash-password`"
                )
            users[name] = hashed
        if password := env.get("SLUICE_UI_PASSWORD"):
            users[env.get("SLUICE_UI_USER") or "admin"] = hash_password(password)
        secret = env.get("SLUICE_UI_SECRET")
        return cls(
            users=users,
            read_only=(env.get("SLUICE_UI_READ_ONLY") or "").strip().lower() in _TRUE,
            **({"secret": secret.encode()} if secret else {}),
        )

    # --- signed values ---------------------------------------------------------------
    def _mac(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()

    def csrf_for(self, browser: str) -> str:
        return self._mac("csrf:" + browser)

    def session_for(self, user: str, now: float | None = None) -> str:
        body = base64.urlsafe_b64encode(
            json.dumps({"u": user, "exp": int((now or time.time()) + SESSION_SECONDS)}).encode()
        ).decode()
        return f"{body}.{self._mac('session:' + body)}"

    def user_of(self, cookie: str | None, now: float | None = None) -> str | None:
        """The user a session cookie names, if its signature holds and it has not expired."""
        if not cookie or "." not in cookie:
            return None
        body, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac("session:" + body)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            return None
        user = data.get("u")
        if data.get("exp", 0) < (now or time.time()) or user not in self.users:
            return None
        return str(user)

    def check(self, user: str, password: str) -> bool:
        stored = self.users.get(user)
        if stored is None:
            verify_password(password, hash_password("x"))  # the same work: no user probing
            return False
        return verify_password(password, stored)


def csrf_field() -> Markup:
    """The hidden input every POST form of the UI carries (a Jinja global)."""
    return Markup('<input type="hidden" name="csrf" value="{}">').format(_csrf_token.get())


def current_user() -> str | None:
    return _user.get()


def _cookies(scope: Scope) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            try:
                jar.load(value.decode("latin-1"))
            except Exception:
                continue
    return {k: m.value for k, m in jar.items()}


class AccessMiddleware:
    """Sets each browser's CSRF cookie, and sends anyone not logged in to the login page."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        browser = cookies.get(CSRF_COOKIE) or ""
        fresh = not browser or len(browser) > 64
        if fresh:
            browser = secrets.token_urlsafe(24)
        _csrf_token.set(self.access.csrf_for(browser))
        user = self.access.user_of(cookies.get(SESSION_COOKIE))
        _user.set(user)
        path: str = scope["path"]
        if self.access.login and user is None and not path.startswith(_OPEN_PATHS):
            await _drain(receive)
            await self._to_login(scope, send, fresh, browser)
            return

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and fresh:
                headers = list(message.get("headers", []))
                cookie = _set_cookie(CSRF_COOKIE, browser, secure=scope.get("scheme") == "https")
                headers.append((b"set-cookie", cookie.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_cookie)

    async def _to_login(self, scope: Scope, send: Send, fresh: bool, browser: str) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{query}" if query else "")
        # A page the browser navigates to goes to the login page; what a
        # page's script fetches (parts, logs, streams) gets 401, and the script
        # reloads the page, which then goes to the login page.
        accept = dict(scope.get("headers", [])).get(b"accept", b"")
        wants_page = (
            scope["method"] == "GET"
            and b"text/html" in accept
            and not scope["path"].endswith("/live")
        )
        headers = [(b"cache-control", b"no-store")]
        if fresh:
            cookie = _set_cookie(CSRF_COOKIE, browser, secure=scope.get("scheme") == "https")
            headers.append((b"set-cookie", cookie.encode()))
        if wants_page:
            location = "/login?next=" + quote(target, safe="")
            headers.append((b"location", location.encode()))
            status, body = 303, b""
        else:
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
            status, body = 401, b"log in first: /login\n"
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, limit: int = 1 << 20) -> None:
    """Read (and drop) a refused request's body, up to ``limit`` bytes.

    A response sent while the client is still sending its form would leave
    unread bytes behind; closing such a connection resets it, and the client
    then loses the 401 it was sent (seen as "connection reset by peer").
    """
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _set_cookie(name: str, value: str, *, secure: bool, max_age: int | None = None) -> str:
    text = f"{name}={value}; Path=/; HttpOnly; SameSite=Lax"
    if secure:  # served over HTTPS (or behind a proxy that says so): never send it in clear
        text += "; Secure"
    if max_age is not None:
        text += f"; Max-Age={max_age}"
    return text


def session_cookie(access: Access, user: str | None, *, secure: bool = False) -> str:
    """The Set-Cookie value that logs ``user`` in (None: logs out)."""
    if user is None:
        return _set_cookie(SESSION_COOKIE, "", secure=secure, max_age=0)
    return _set_cookie(
        SESSION_COOKIE, access.session_for(user), secure=secure, max_age=SESSION_SECONDS
    )


async def guard(request: Request, access: Access, *, action: bool = True) -> FormData:
    """Every state-changing POST's checks, in order: read-only, same site, CSRF token.

    ``action=False`` (logging in or out) skips the read-only check: that mode
    is about acting on the stack. Returns the form (Starlette keeps it, so
    the handler reads it again for free).
    """
    if action and access.read_only:
        raise HTTPException(403, "this web UI is read-only (SLUICE_UI_READ_ONLY)")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "forms are only accepted from this server's pages")
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "forms are only accepted from this server's pages")
    form = await request.form()
    sent = form.get("csrf")
    browser = request.cookies.get(CSRF_COOKIE)
    if (
        not isinstance(sent, str)
        or not browser
        or not hmac.compare_digest(sent, access.csrf_for(browser))
    ):
        raise HTTPException(
            403, "the form's security token is missing or stale; reload the page and try again"
        )
    return form
