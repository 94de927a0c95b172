"""The UI's locks against a real stack (the session's nats-server and an orchestrator):
the login, CSRF tokens on every form, and the read-only mode."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.request
from urllib.parse import urlencode

import anyio
import pytest

from engine.client import Client
from services.orchestrator import Orchestrator
from services.ui import UIService
from services.ui._auth import Access, hash_password
from shared.messages import RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

from .login import csrf_token, logged_in

pytestmark = pytest.mark.anyio


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _status(opener: urllib.request.OpenerDirector, url: str, form: dict[str, str] | None = None):
    """(status, body, Location) of one request, redirects not followed."""
    data = urlencode(form).encode() if form is not None else None
    try:
        with opener.open(url, data=data, timeout=30) as response:
            return response.status, response.read().decode(), response.headers.get("location")
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(), exc.headers.get("location")


def _browser() -> urllib.request.OpenerDirector:
    """Cookies kept, redirects not followed, and asking for pages as a browser does."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
    opener.addheaders = [("Accept", "text/html,*/*;q=0.8")]
    return opener


async def _run_waiting(client: Client, unique: str) -> str:
    await client.register_deployment(
        RegisterDeployment(name=unique, flow_name="ui-access", queue=f"nobody-{unique}")
    )
    return (await client.create_flow_run(f"ui-access/{unique}")).id


async def test_a_login_guards_every_page_stream_and_form(
    settings: Settings, orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    run_id = await _run_waiting(client, unique)
    users = {"ada": hash_password("lovelace")}
    async with UIService(settings, port=0, grace=1.0, access=Access(users=users)) as ui:
        base = ui.url
        stranger = _browser()

        def visit() -> None:
            # Not logged in: pages send to the login page, streams and forms get 401.
            status, _, location = _status(stranger, f"{base}/runs/{run_id}")
            assert status == 303 and location == f"/login?next=%2Fruns%2F{run_id}"
            assert _status(stranger, f"{base}/runs/live")[0] == 401
            # What a page's script fetches gets 401 too (the script then reloads the page).
            fetcher = urllib.request.build_opener(_NoRedirect())
            assert _status(fetcher, f"{base}/runs/{run_id}?part=1")[0] == 401
            assert _status(stranger, f"{base}/runs/{run_id}/cancel", {"csrf": "x"})[0] == 401
            # The stack's status and the static files stay open (the login page needs them).
            assert _status(stranger, f"{base}/stack")[0] == 200
            assert _status(stranger, f"{base}/static/sluice.css")[0] == 200

            status, page, _ = _status(stranger, f"{base}/login")
            assert status == 200 and 'name="password"' in page
            form = {"csrf": csrf_token(page), "user": "ada", "password": "wrong", "next": "/"}
            status, page, _ = _status(stranger, f"{base}/login", form)
            assert status == 401 and "Wrong user name or password" in page
            # A login form without the page's token is refused too.
            refused = {**form, "password": "lovelace", "csrf": "forged"}
            assert _status(stranger, f"{base}/login", refused)[0] == 403

            ada = logged_in(base, "ada", "lovelace")
            with ada.open(f"{base}/runs/{run_id}", timeout=30) as response:
                page = response.read().decode()
            assert run_id in page and "ada" in page
            # A form posted without its token is refused, and nothing happens.
            status, body, _ = _status(ada, f"{base}/runs/{run_id}/cancel", {"next": "/runs"})
            assert status == 403 and "security token" in body
            status, _, _ = _status(ada, f"{base}/runs/{run_id}/cancel", {"csrf": "0" * 64})
            assert status == 403

        await anyio.to_thread.run_sync(visit)
        assert (await client.read_flow_run(run_id)).state.type is StateType.SCHEDULED

        def cancel_with_token() -> None:
            ada = logged_in(base, "ada", "lovelace")
            with ada.open(f"{base}/runs/{run_id}", timeout=30) as response:
                token = csrf_token(response.read().decode())
            form = {"csrf": token, "next": f"/runs/{run_id}"}
            with ada.open(f"{base}/runs/{run_id}/cancel", urlencode(form).encode(), timeout=30):
                pass
            # Logging out ends the session: the next page asks for the login again.
            with ada.open(f"{base}/runs", timeout=30) as response:
                token = csrf_token(response.read().decode())
            with ada.open(f"{base}/logout", urlencode({"csrf": token}).encode(), timeout=30) as r:
                assert "/login" in r.url

        await anyio.to_thread.run_sync(cancel_with_token)
        assert (await client.read_flow_run(run_id)).state.type is StateType.CANCELLED


async def test_without_a_login_forms_still_need_their_token(
    settings: Settings, orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    run_id = await _run_waiting(client, unique)
    async with UIService(settings, port=0, grace=1.0, access=Access()) as ui:

        def visit() -> None:
            browser = _browser()
            status, page, _ = _status(browser, f"{ui.url}/runs/{run_id}")
            assert status == 200 and 'name="csrf"' in page
            assert _status(browser, f"{ui.url}/runs/{run_id}/cancel", {"next": "/"})[0] == 403
            # The login page has nothing to do here.
            assert _status(browser, f"{ui.url}/login")[2] == "/runs"

        await anyio.to_thread.run_sync(visit)
    assert (await client.read_flow_run(run_id)).state.type is StateType.SCHEDULED


async def test_read_only_shows_pages_but_refuses_every_action(
    settings: Settings, orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    run_id = await _run_waiting(client, unique)
    deployment = await client.read_deployment(f"ui-access/{unique}")
    async with UIService(settings, port=0, grace=1.0, access=Access(read_only=True)) as ui:

        def visit() -> None:
            browser = _browser()
            status, page, _ = _status(browser, f"{ui.url}/runs/{run_id}")
            assert status == 200 and "read-only" in page and 'class="read-only"' in page
            form = {"csrf": csrf_token(page), "next": "/runs"}
            status, body, _ = _status(browser, f"{ui.url}/runs/{run_id}/cancel", form)
            assert status == 403 and "read-only" in body
            pause = {**form, "name": f"ui-access/{unique}"}
            assert _status(browser, f"{ui.url}/deployments/pause", pause)[0] == 403
            assert _status(browser, f"{ui.url}/deployments/{deployment.id}/run")[0] == 403
            assert _status(browser, f"{ui.url}/deployments/{deployment.id}")[0] == 200

        await anyio.to_thread.run_sync(visit)
    assert (await client.read_flow_run(run_id)).state.type is StateType.SCHEDULED
    assert not (await client.read_deployment(f"ui-access/{unique}")).paused


def test_hash_password_prints_a_hash_for_the_users_variable() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "services.ui", "--hash-password"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert Access.from_env({"SLUICE_UI_USERS": f"ada:{hashed}"}).check("ada", "correct horse")


def test_a_malformed_users_variable_is_a_clear_error(settings: Settings) -> None:
    import subprocess
    import sys

    env = {
        "SLUICE_NATS_URL": settings.nats_url,
        "PATH": "/usr/bin:/bin",
        "SLUICE_UI_USERS": "ada:plaintext",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.ui", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "SLUICE_UI_USERS must be NAME:HASH" in done.stderr and "Traceback" not in done.stderr
