"""The picture of the runs page in the README (docs/ui-runs.png), from a fresh stack.

Its own module, so its stack holds only the runs made here: a few that
completed, one that failed, one cancelled, one still running. A test run
leaves the picture under tests/ui/screenshots/; with ``SLUICE_DOCS_PICTURES=1``
it also replaces docs/ui-runs.png (a plain test run must not change the docs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from engine.sync import SyncClient

from .conftest import WAIT_MS, Stack, screenshot

pytestmark = pytest.mark.slow


def test_runs_page_picture(page: Page, stack: Stack, sync_client: SyncClient) -> None:
    done = [
        sync_client.create_flow_run("hello-world/default", parameters={"name": name})
        for name in ("Ada", "Grace")
    ]
    done.append(sync_client.create_flow_run("etl/default", parameters={"flaky": 0.0}))
    failed = sync_client.create_flow_run("etl/default", parameters={"flaky": 1.0})
    cancelled = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300})
    for run in [*done, failed]:
        sync_client.wait_for_flow_run(run.id)
    page.goto(f"{stack.url}/runs/{cancelled.id}")
    expect(page.locator("#run-detail h1 .state")).to_have_text("Running", timeout=WAIT_MS)
    sync_client.cancel_flow_run(cancelled.id)
    expect(page.locator("#run-detail h1 .state")).to_have_text("Cancelled", timeout=WAIT_MS)
    running = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300})

    page.emulate_media(reduced_motion="reduce")  # no highlight caught half-way
    page.set_viewport_size({"width": 1200, "height": 560})
    page.goto(f"{stack.url}/runs")
    expect(page.locator(f'tr[data-run-id="{running.id}"] .state')).to_have_text(
        "Running", timeout=WAIT_MS
    )
    expect(page.locator(f'tr[data-run-id="{failed.id}"] .state')).to_have_text("Failed")
    screenshot(page, "runs-overview")
    if os.environ.get("SLUICE_DOCS_PICTURES") == "1":
        # What the window shows, not the whole long page.
        page.screenshot(path=str(Path(__file__).resolve().parents[2] / "docs" / "ui-runs.png"))
    sync_client.cancel_flow_run(running.id)
