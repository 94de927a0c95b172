"""The UI locked, in a browser: its login, and an open page whose stack goes away.

A module of its own: the last test kills the nats-server of its stack, which
the other browser tests still need.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from engine.sync import SyncClient
from services.dev import free_port
from tests._procs import nats_server_of, service_env

from .conftest import WAIT_MS, Stack, screenshot

pytestmark = pytest.mark.slow


@pytest.fixture
def locked_ui(stack: Stack) -> Iterator[str]:
    """A second web UI on the same stack, with a login (user admin, password "sesame")."""
    port = free_port()
    env = {**service_env(stack.settings), "SLUICE_UI_PASSWORD": "sesame"}
    with (stack.log.parent / "locked-ui.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.ui", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            try:
                with urllib.request.urlopen(f"{url}/stack", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, "no UI came up"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_locked_ui_asks_for_a_login_first(
    page: Page, locked_ui: str, sync_client: SyncClient
) -> None:
    run = sync_client.create_flow_run("hello-world/default")
    page.goto(f"{locked_ui}/runs/{run.id}")
    expect(page).to_have_url(f"{locked_ui}/login?next=%2Fruns%2F{run.id}")
    page.fill("#user", "admin")
    page.fill("#password", "wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login")).to_contain_text("Wrong user name or password.")
    expect(page.locator("header nav")).to_have_count(0)  # nothing about the stack before
    expect(page.locator("footer")).to_have_count(0)
    screenshot(page, "login")
    page.fill("#password", "sesame")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{locked_ui}/runs/{run.id}")  # where it was going
    expect(page.locator("header .logout")).to_contain_text("admin")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    page.goto(f"{locked_ui}/runs")
    expect(page).to_have_url(re.compile(r"/login\?next="))


def test_a_page_says_the_stack_is_unreachable_and_disables_its_buttons(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    run = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300})
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(page.locator("#run-detail h1 .state")).to_have_text("Running", timeout=WAIT_MS)
    cancel = page.get_by_role("button", name="Cancel run")
    expect(cancel).to_be_enabled()
    expect(page.locator("#stale")).to_be_hidden()

    server = nats_server_of(stack.settings.home)
    assert server is not None, "no nats-server under the stack's home"
    # Frozen, not killed: `sluice dev` starts a killed server again at once.
    os.kill(server, signal.SIGSTOP)
    try:
        expect(page.locator("#stale")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#stale")).to_contain_text("Stack unreachable; data may be stale")
        expect(cancel).to_be_disabled()
        screenshot(page, "stale")
    finally:
        os.kill(server, signal.SIGCONT)
    # Back: the banner goes, and the buttons work again.
    expect(page.locator("#stale")).to_be_hidden(timeout=WAIT_MS)
    expect(cancel).to_be_enabled()
