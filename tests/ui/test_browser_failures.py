"""A failed run's page in a real browser: the traceback folded, monospace and copyable,
and the task's name on its log lines."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from engine.sync import SyncClient
from shared.messages import RegisterDeployment

from .conftest import WAIT_MS, Stack, screenshot

pytestmark = pytest.mark.slow

FLOWS = Path(__file__).parents[1] / "engine_stack" / "flows"
FILE = FLOWS / "failing.py"
LINE = next(i for i, t in enumerate(FILE.read_text().splitlines(), 1) if "FAILING LINE" in t)


def test_a_failed_run_shows_its_traceback_and_task_names(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    name = f"failing-{uuid.uuid4().hex[:6]}"
    sync_client.register_deployment(
        RegisterDeployment(
            name=name, flow_name="failing", entrypoint="failing.py:failing", path=str(FLOWS)
        )
    )
    run = sync_client.create_flow_run(f"failing/{name}")
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(page.locator("#run-detail h1 .state")).to_have_text("Failed", timeout=WAIT_MS)
    # No reload: the page follows the run live, and the traceback arrives with Failed.

    folded = page.locator("#traceback")
    expect(folded).to_be_visible()
    expect(folded.locator("summary")).to_contain_text("ValueError")
    text = page.locator("#traceback-text")
    expect(text).to_be_hidden()  # folded until asked for
    folded.locator("summary").click()
    expect(text).to_be_visible()
    expect(text).to_contain_text(f'File "{FILE}", line {LINE}, in open_table')
    font = text.evaluate("e => getComputedStyle(e).fontFamily")
    assert "monospace" in font
    expect(folded.get_by_role("button", name="Copy")).to_be_visible()

    task_lines = page.locator("#logs .log-line", has=page.locator(".log-task"))
    expect(task_lines.first).to_contain_text("extract-0", timeout=WAIT_MS)
    expect(page.locator("#logs")).to_contain_text("retry 1 of 2")
    screenshot(page, "run-failed-traceback")
