"""An open page whose stack goes away says so and turns its buttons off.

A module of its own: it kills the nats-server of its stack, which the other
browser tests still need.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from engine.sync import SyncClient

from .conftest import WAIT_MS, Stack, screenshot

pytestmark = pytest.mark.slow


def _nats_server_of(stack: Stack) -> int:
    """The pid of the nats-server ``sluice dev`` started under the stack's home folder."""
    home = str(stack.settings.home)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"nats-server") and any(home.encode() in a for a in argv):
            return int(entry.name)
    raise AssertionError(f"no nats-server under {home}")


def test_a_page_says_the_stack_is_unreachable_and_disables_its_buttons(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    run = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300})
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(page.locator("#run-detail h1 .state")).to_have_text("Running", timeout=WAIT_MS)
    cancel = page.get_by_role("button", name="Cancel run")
    expect(cancel).to_be_enabled()
    expect(page.locator("#stale")).to_be_hidden()

    os.kill(_nats_server_of(stack), signal.SIGKILL)

    expect(page.locator("#stale")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#stale")).to_contain_text("Stack unreachable; data may be stale")
    expect(cancel).to_be_disabled()
    screenshot(page, "stale")
