"""The web UI's deployment and runner pages in a real browser, against a whole
running stack (``python -m services.dev``): schedules, slots, upcoming and
recent runs, a runner that stops. The run pages are in test_browser.py.

Each test isolates its runs with a tag of its own; pictures of every page go
to tests/ui/screenshots/ for review.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Locator, Page, expect

from engine.sync import SyncClient
from shared.messages import RegisterDeployment
from shared.models import DeploymentSchedule, IntervalSchedule
from tests._procs import service_env

from .conftest import WAIT_MS, Stack, new_tag, run_state, screenshot

pytestmark = pytest.mark.slow


def test_deployments_page_schedules_slots_pause_and_resume(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    name = f"hourly-{uuid.uuid4().hex[:6]}"
    sync_client.register_deployment(
        RegisterDeployment(
            name=name,
            flow_name="ui-test",
            queue="nobody",
            concurrency_limit=2,
            schedules=[DeploymentSchedule(schedule=IntervalSchedule(interval=3600))],
        )
    )
    page.goto(f"{stack.url}/deployments")
    row = page.locator(f'tr[data-deployment="ui-test/{name}"]')
    expect(row).to_contain_text("every 60m")
    expect(row).to_contain_text("0 / 2")
    # The scheduler creates the upcoming runs; the table is read again by itself.
    expect(row.locator("td").nth(2).locator("a")).not_to_have_count(0, timeout=WAIT_MS)
    expect(row).to_contain_text("Active")

    row.get_by_role("button", name="Pause").click()
    expect(row).to_contain_text("Paused")
    assert sync_client.read_deployment(f"ui-test/{name}").paused
    row.get_by_role("button", name="Resume").click()
    expect(row).to_contain_text("Active")
    assert not sync_client.read_deployment(f"ui-test/{name}").paused
    expect(page.locator('tr[data-deployment="sleepy/default"]')).to_be_visible()
    screenshot(page, "deployments")


def test_slots_in_use_and_a_run_waiting_for_one(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    sleepy = sync_client.read_deployment("sleepy/default")
    name = f"one-at-a-time-{uuid.uuid4().hex[:6]}"
    sync_client.register_deployment(
        RegisterDeployment(
            name=name,
            flow_name="sleepy",
            entrypoint=sleepy.entrypoint,
            path=sleepy.path,
            parameter_schema=sleepy.parameter_schema,
            concurrency_limit=1,
        )
    )
    tag = new_tag()
    first = sync_client.create_flow_run(f"sleepy/{name}", parameters={"seconds": 300}, tags=[tag])
    second = sync_client.create_flow_run(f"sleepy/{name}", parameters={"seconds": 1}, tags=[tag])
    page.goto(f"{stack.url}/runs/{first.id}")
    expect(page.locator("#run-detail h1 .state")).to_have_text("Running", timeout=WAIT_MS)

    page.goto(f"{stack.url}/deployments")
    row = page.locator(f'tr[data-deployment="sleepy/{name}"]')
    expect(row).to_contain_text("1 / 1")
    expect(row.get_by_role("link", name=first.id[:8])).to_be_visible()

    page.goto(f"{stack.url}/runs/{second.id}")
    expect(page.locator("#why-waiting")).to_contain_text("waiting for a concurrency slot")
    # Held back by the limit, not late: the badge says so.
    expect(run_state(page)).to_have_text("AwaitingConcurrencySlot")
    screenshot(page, "run-waiting")
    page.goto(f"{stack.url}/runs?tag={tag}")
    expect(page.locator(f'tr[data-run-id="{second.id}"] .state')).to_have_text(
        "AwaitingConcurrencySlot"
    )
    page.goto(f"{stack.url}/runs/{second.id}")
    # The slot comes free when the first run is cancelled; the second then runs, live.
    sync_client.cancel_flow_run(first.id)
    expect(run_state(page)).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("#why-waiting")).to_have_count(0)


def test_runners_page(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/runners")
    row = page.locator('tr[data-runner="dev"]')
    expect(row).to_contain_text("Alive")
    expect(row).to_contain_text("/ 8")
    # What it serves: its queue and each deployment it was given.
    expect(row.locator(".serves")).to_contain_text("queue default")
    expect(row.locator(".serves")).to_contain_text("hello-world/default")
    screenshot(page, "runners")


def _schedule_deployment(sync_client: SyncClient, name: str) -> None:
    sync_client.register_deployment(
        RegisterDeployment(
            name=name,
            flow_name="ui-test",
            queue="nobody",
            description="Hourly report, kept for the UI tests.",
            entrypoint="reports.py:hourly",
            parameters={"region": "eu"},
            parameter_schema={
                "type": "object",
                "properties": {"region": {"type": "string"}, "depth": {"type": "integer"}},
            },
            schedules=[DeploymentSchedule(schedule=IntervalSchedule(interval=3600))],
        )
    )


def _reload_until(page: Page, locator: Locator, at_least: int = 1) -> None:
    """The scheduler creates runs on its own time: read the page again until
    ``at_least`` show."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while locator.count() < at_least:
        assert time.monotonic() < deadline, "nothing appeared"
        page.wait_for_timeout(1000)
        page.reload()


def _reload_while(page: Page, locator: Locator) -> None:
    """Read the page again until ``locator`` finds nothing (the stack acts on its own time)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while locator.count():
        assert time.monotonic() < deadline, "still there"
        page.wait_for_timeout(1000)
        page.reload()


def test_upcoming_runs_are_apart_from_recent_ones(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    name = f"report-{uuid.uuid4().hex[:6]}"
    _schedule_deployment(sync_client, name)
    manual = sync_client.create_flow_run(f"ui-test/{name}")
    page.goto(f"{stack.url}/runs?deployment=ui-test/{name}&tab=upcoming")
    upcoming = page.locator("#runs tr[data-run-id]")
    # An hourly schedule within the default one-hour horizon: the scheduler
    # makes its minimum ahead, one create at a time. Counted before it made the
    # last, the rows were one fewer than the badge rendered after.
    _reload_until(page, upcoming, at_least=stack.settings.schedule_min_runs)
    expect(page.locator(f'tr[data-run-id="{manual.id}"]')).to_have_count(0)
    due = [
        datetime.fromisoformat(t)
        for t in page.locator("#runs tr[data-run-id] time").evaluate_all(
            "els => els.map(e => e.getAttribute('datetime'))"
        )
    ]
    assert due == sorted(due) and due[0] > datetime.now(UTC)  # soonest first, all ahead
    count = upcoming.count()
    expect(page.locator("#tab-upcoming .count")).to_have_text(str(count))
    screenshot(page, "runs-upcoming")

    page.locator("#tab-recent").click()
    expect(page.locator(f'tr[data-run-id="{manual.id}"]')).to_be_visible()
    started = [
        datetime.fromisoformat(t)
        for t in page.locator("#runs tr[data-run-id] time").evaluate_all(
            "els => els.map(e => e.getAttribute('datetime'))"
        )
    ]
    assert started and all(t <= datetime.now(UTC) for t in started)
    expect(page.locator("#tab-upcoming .count")).to_have_text(str(count))


def test_recent_runs_are_newest_first_with_a_total(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    tag = new_tag()
    runs = [sync_client.create_flow_run("hello-world/default", tags=[tag]) for _ in range(3)]
    page.goto(f"{stack.url}/runs?tag={tag}")
    rows = page.locator("#runs tr[data-run-id]")
    expect(rows).to_have_count(3)
    assert [r.get_attribute("data-run-id") for r in rows.all()] == [r.id for r in reversed(runs)]
    expect(page.locator("#run-total")).to_have_text("3 runs")
    expect(page.locator(".pager")).to_contain_text("of 3")


def test_deployment_page(page: Page, stack: Stack, sync_client: SyncClient) -> None:
    name = f"report-{uuid.uuid4().hex[:6]}"
    _schedule_deployment(sync_client, name)
    manual = sync_client.create_flow_run(f"ui-test/{name}")
    page.goto(f"{stack.url}/deployments")
    page.locator(f'tr[data-deployment="ui-test/{name}"]').get_by_role(
        "link", name=f"ui-test/{name}"
    ).click()
    expect(page.get_by_role("heading", name=f"ui-test/{name}")).to_be_visible()
    expect(page.locator("#description")).to_have_text("Hourly report, kept for the UI tests.")
    facts = page.locator("#deployment-facts")
    expect(facts).to_contain_text("reports.py:hourly")
    expect(facts).to_contain_text("every 60m")
    expect(facts).to_contain_text("nobody")
    expect(page.locator("#parameters")).to_contain_text('"region": "eu"')
    expect(page.locator("#schema")).to_contain_text('"depth"')
    expect(page.locator(f'#recent-runs tr[data-run-id="{manual.id}"]')).to_be_visible()
    _reload_until(page, page.locator("#upcoming-runs tr[data-run-id]"))
    screenshot(page, "deployment")

    # Pausing removes the schedule's upcoming runs (none is left Cancelled) and
    # keeps the one made by hand; resuming makes the upcoming ones again.
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("h1 .state")).to_have_text("Paused")
    assert sync_client.read_deployment(f"ui-test/{name}").paused
    _reload_while(page, page.locator("#upcoming-runs tr[data-run-id]"))
    expect(page.locator(f'#recent-runs tr[data-run-id="{manual.id}"]')).to_be_visible()
    page.goto(f"{stack.url}/runs?deployment=ui-test/{name}&state=CANCELLED&tab=upcoming")
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(0)
    page.goto(f"{stack.url}/runs?deployment=ui-test/{name}&state=CANCELLED")
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(0)
    page.goto(f"{stack.url}/deployments/{sync_client.read_deployment(f'ui-test/{name}').id}")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("h1 .state")).to_have_text("Active")
    _reload_until(page, page.locator("#upcoming-runs tr[data-run-id]"))
    screenshot(page, "deployment-resumed")
    # Run… leads to the form of this deployment.
    page.get_by_role("link", name="Run…").click()
    expect(page.get_by_role("heading", name=f"Run ui-test/{name}")).to_be_visible()


def test_a_runner_that_stops_is_shown_as_lost(page: Page, stack: Stack) -> None:
    name = f"short-lived-{uuid.uuid4().hex[:6]}"
    env = {**service_env(stack.settings), "SLUICE_HEARTBEAT_INTERVAL": "1"}
    with (stack.log.parent / f"{name}.log").open("ab") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "services.runner", "--name", name, "--queue", "nightly"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        page.goto(f"{stack.url}/runners")
        row = page.locator(f'tr[data-runner="{name}"]')
        expect(row).to_contain_text("Alive", timeout=WAIT_MS)
        expect(row.locator(".serves")).to_contain_text("queue nightly")
    finally:
        runner.kill()
        runner.wait(30)
    # Its heartbeat entry expires; the page keeps it, as lost, and refreshes by itself.
    expect(row).to_have_attribute("data-alive", "no", timeout=WAIT_MS)
    expect(row).to_contain_text("Lost")
    page.reload()
    expect(row).to_contain_text("Lost")
    expect(page.locator('tr[data-runner="dev"]')).to_contain_text("Alive")
    screenshot(page, "runners-lost")
