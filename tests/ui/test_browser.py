"""The web UI in a real browser, against a whole running stack (``python -m services.dev``).

Each test isolates its runs with a tag of its own; pictures of every page go
to tests/ui/screenshots/ for review.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Locator, Page, expect

from engine.sync import SyncClient
from shared.messages import RegisterDeployment
from shared.models import DeploymentSchedule, IntervalSchedule
from tests._procs import service_env

from .conftest import WAIT_MS, Stack, screenshot

pytestmark = pytest.mark.slow


def _tag() -> str:
    return f"ui-{uuid.uuid4().hex[:8]}"


def _state(page: Page) -> Locator:
    return page.locator("#run-detail h1 .state")


def _mark_page(page: Page) -> None:
    """Leave a marker in the page's JS world: a reload would wipe it."""
    page.evaluate("window.__sluiceMarker = 'kept'")


def _assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sluiceMarker") == "kept"


def test_run_form_starts_a_run_that_completes_live(page: Page, stack: Stack) -> None:
    tag = _tag()
    page.goto(f"{stack.url}/deployments")
    row = page.locator('tr[data-deployment="hello-world/default"]')
    row.get_by_role("link", name="Run…").click()
    expect(page.get_by_role("heading", name="Run hello-world/default")).to_be_visible()
    page.fill("#p\\.name", "Ada")
    page.fill("#tags", tag)
    page.get_by_role("button", name="Run", exact=True).click()

    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    _mark_page(page)
    expect(page.locator("#run-detail h1 .state")).to_have_text("Completed", timeout=WAIT_MS)
    _assert_not_reloaded(page)
    expect(page.locator("#logs")).to_contain_text("Hello, Ada!", timeout=WAIT_MS)
    expect(page.locator("#result")).to_contain_text("Hello, Ada!")
    expect(page.locator("#timeline")).to_contain_text("Running")
    expect(page.locator("#task-runs")).to_contain_text("compose")
    expect(page.locator("#run-detail")).to_contain_text(tag)
    screenshot(page, "run-completed")

    # Retry: back to Scheduled, through the same steps, to Completed again.
    page.get_by_role("button", name="Retry run").click()
    expect(page.locator("#timeline")).to_contain_text("AwaitingRetry", timeout=WAIT_MS)
    expect(page.locator("#run-detail h1 .state")).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("#run-detail")).to_contain_text("ran 2", timeout=WAIT_MS)


def test_runs_page_shows_new_runs_and_their_states_live(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    tag = _tag()
    page.goto(f"{stack.url}/runs?tag={tag}")
    expect(page.locator("#runs")).to_contain_text("No flow runs match.")
    expect(page.locator("#live-status")).to_have_text("live")
    _mark_page(page)

    run = sync_client.create_flow_run(
        "hello-world/default", parameters={"name": "Grace"}, tags=[tag]
    )
    row = page.locator(f'tr[data-run-id="{run.id}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(row.locator(".state")).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("tr.empty")).to_be_hidden()
    expect(page.locator("#run-total")).to_have_text("1 run")  # counted as it came
    _assert_not_reloaded(page)

    # Filters: by state and by deployment, as the form sends them.
    page.locator("#state-filter summary").click()
    page.check('#state-filter input[value="FAILED"]')
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#runs")).to_contain_text("No flow runs match.")
    page.locator("#state-filter summary").click()
    page.uncheck('#state-filter input[value="FAILED"]')
    page.check('#state-filter input[value="COMPLETED"]')
    page.select_option('select[name="deployment"]', "hello-world/default")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(f'tr[data-run-id="{run.id}"]')).to_be_visible()
    screenshot(page, "runs-filtered")


def test_cancel_a_sleeping_run(page: Page, stack: Stack, sync_client: SyncClient) -> None:
    run = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300}, tags=[_tag()])
    page.goto(f"{stack.url}/runs/{run.id}")
    _mark_page(page)
    expect(page.locator("#run-detail h1 .state")).to_have_text("Running", timeout=WAIT_MS)
    expect(page.locator("#logs")).to_contain_text("still sleeping (1/300)", timeout=WAIT_MS)
    screenshot(page, "run-running")

    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-detail h1 .state")).to_have_text("Cancelled", timeout=WAIT_MS)
    expect(page.locator("#timeline")).to_contain_text("Cancelling")
    expect(page.get_by_role("button", name="Retry run")).to_be_visible()
    assert sync_client.read_flow_run(run.id).state.name == "Cancelled"
    screenshot(page, "run-cancelled")


def test_cancel_from_the_runs_table(page: Page, stack: Stack, sync_client: SyncClient) -> None:
    tag = _tag()
    run = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300}, tags=[tag])
    page.goto(f"{stack.url}/runs?tag={tag}")
    row = page.locator(f'tr[data-run-id="{run.id}"]')
    expect(row.locator(".state")).to_have_text("Running", timeout=WAIT_MS)
    row.get_by_role("button", name="Cancel").click()
    expect(row.locator(".state")).to_have_text("Cancelled", timeout=WAIT_MS)
    assert page.url.endswith(f"/runs?tag={tag}")  # back where the button was


def test_bad_form_input_is_explained_beside_the_field(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    sleepy = sync_client.read_deployment("sleepy/default")
    page.goto(f"{stack.url}/deployments/{sleepy.id}/run")
    page.fill("#p\\.seconds", "ten")
    page.get_by_role("button", name="Run", exact=True).click()
    field = page.locator('[data-field="seconds"]')
    expect(field.locator(".field-error")).to_contain_text("is not of type 'number'")
    expect(page.locator("#p\\.seconds")).to_have_value("ten")  # kept for correcting

    # A parameter that takes JSON: text that is not JSON never reaches the stack.
    name = f"configured-{uuid.uuid4().hex[:6]}"
    schema = {
        "type": "object",
        "properties": {"config": {"type": "object"}, "label": {"type": "string"}},
        "required": ["label"],
    }
    deployment = sync_client.register_deployment(
        RegisterDeployment(name=name, flow_name="ui-test", parameter_schema=schema, queue="nobody")
    )
    page.goto(f"{stack.url}/deployments/{deployment.id}/run")
    page.fill("#p\\.config", "{oops")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator('[data-field="config"] .field-error')).to_contain_text("not valid JSON")
    # Valid JSON, but a required parameter missing: the orchestrator's error, placed.
    page.fill("#p\\.config", '{"depth": 2}')
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator('[data-field="label"] .field-error')).to_have_text("required")
    expect(page.locator('[data-field="config"] .field-error')).to_have_count(0)
    screenshot(page, "run-form-errors")


def test_a_run_that_cannot_start_says_why_and_shows_its_family(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    name = f"stranded-{uuid.uuid4().hex[:6]}"
    sync_client.register_deployment(
        RegisterDeployment(name=name, flow_name="ui-test", queue="nobody")
    )
    parent = sync_client.create_flow_run(f"ui-test/{name}", tags=[_tag()])
    child = sync_client.create_flow_run(flow_name="ui-child", parent_flow_run_id=parent.id)
    page.goto(f"{stack.url}/runs/{parent.id}")
    expect(page.locator("#why-waiting")).to_contain_text("no live runner has taken it yet")
    expect(page.locator("#run-detail")).to_contain_text(child.name)
    page.get_by_role("link", name=child.name).click()
    expect(page.get_by_role("link", name=parent.name)).to_be_visible()
    expect(page.locator("#why-waiting")).to_contain_text("no deployment")


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
    tag = _tag()
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
    expect(_state(page)).to_have_text("AwaitingConcurrencySlot")
    screenshot(page, "run-waiting")
    page.goto(f"{stack.url}/runs?tag={tag}")
    expect(page.locator(f'tr[data-run-id="{second.id}"] .state')).to_have_text(
        "AwaitingConcurrencySlot"
    )
    page.goto(f"{stack.url}/runs/{second.id}")
    # The slot comes free when the first run is cancelled; the second then runs, live.
    sync_client.cancel_flow_run(first.id)
    expect(_state(page)).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("#why-waiting")).to_have_count(0)


def test_paging_newest_first(page: Page, stack: Stack, sync_client: SyncClient) -> None:
    name = f"many-{uuid.uuid4().hex[:6]}"
    sync_client.register_deployment(
        RegisterDeployment(name=name, flow_name="ui-test", queue="nobody")
    )
    tag = _tag()
    runs = [sync_client.create_flow_run(f"ui-test/{name}", tags=[tag]) for _ in range(27)]
    page.goto(f"{stack.url}/runs?tag={tag}")
    rows = page.locator("#runs tbody tr[data-run-id]")
    expect(rows).to_have_count(25)
    assert rows.first.get_attribute("data-run-id") == runs[-1].id  # the newest on top
    page.get_by_role("link", name="Older →").click()
    expect(rows).to_have_count(2)
    expect(page.locator(f'tr[data-run-id="{runs[0].id}"]')).to_be_visible()
    page.get_by_role("link", name="← Newer").click()
    expect(rows).to_have_count(25)
    for run in runs:
        sync_client.cancel_flow_run(run.id)


def test_runners_page(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/runners")
    row = page.locator('tr[data-runner="dev"]')
    expect(row).to_contain_text("Alive")
    expect(row).to_contain_text("/ 8")
    # What it serves: its queue and each deployment it was given.
    expect(row.locator(".serves")).to_contain_text("queue default")
    expect(row.locator(".serves")).to_contain_text("hello-world/default")
    screenshot(page, "runners")


def test_errors_are_pages_not_tracebacks(page: Page, stack: Stack) -> None:
    missing = str(uuid.uuid4())
    response = page.goto(f"{stack.url}/runs/{missing}")
    assert response is not None and response.status == 404
    expect(page.locator("main")).to_contain_text(f"no flow run with id {missing}")
    response = page.goto(f"{stack.url}/runs/not-a-run")
    assert response is not None and response.status == 404


def test_forms_from_other_sites_are_refused(stack: Stack, sync_client: SyncClient) -> None:
    run = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300})
    request = urllib.request.Request(
        f"{stack.url}/runs/{run.id}/cancel",
        data=b"",
        method="POST",
        headers={
            "Origin": "http://evil.example",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    refused.value.close()
    assert refused.value.code == 403
    assert sync_client.read_flow_run(run.id).state.type.value != "CANCELLING"
    sync_client.cancel_flow_run(run.id)


def test_a_retried_task_shows_one_bar_per_attempt_on_the_timeline(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    # Every transform fails, so each is tried 1 + 3 times (examples/etl.py), then the run fails.
    run = sync_client.create_flow_run(
        "etl/default", parameters={"sources": 2, "flaky": 1.0}, tags=[_tag()]
    )
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(_state(page)).to_have_text("Failed", timeout=WAIT_MS)
    gantt = page.locator("#gantt")
    transform = gantt.locator('g.g-row[data-name="transform-0"]')
    expect(transform.locator("rect.g-bar")).to_have_count(4)
    expect(transform.locator("rect.g-bar.st-awaitingretry")).to_have_count(3)
    expect(transform.locator("rect.g-bar.st-failed")).to_have_count(1)
    expect(gantt.locator('g.g-row[data-name="extract-0"] rect.g-bar')).to_have_count(1)
    # Attempts are the task's own, not the flow run's claim (which stays 1).
    row = page.locator("#task-runs tr", has=page.locator("td", has_text="transform-0"))
    expect(row.locator(".attempts")).to_have_text("4")
    expect(page.locator("#run-detail")).to_contain_text("claim 1")
    # Edges to upstream tasks light up on hover.
    expect(gantt.locator(".g-edge")).to_have_count(2)
    transform.hover()
    expect(gantt.locator(".g-edge.hot")).to_have_count(1)
    # A short run's times are to the millisecond.
    expect(page.locator("#task-runs time").first).to_have_text(re.compile(r"\d\d:\d\d:\d\d\.\d{3}"))
    screenshot(page, "run-timeline")


def test_logs_show_the_newest_lines_page_back_and_filter(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    run = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 5}, tags=[_tag()])
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(_state(page)).to_have_text("Completed", timeout=WAIT_MS)
    lines = page.locator("#logs .log-line")
    expect(lines.filter(has_text="still sleeping (5/5)")).to_have_count(1, timeout=WAIT_MS)
    total = lines.count()
    assert total >= 6

    page.goto(f"{stack.url}/runs/{run.id}?lines=2")
    expect(lines).to_have_count(2)
    expect(page.locator("#logs")).not_to_contain_text("still sleeping (1/5)")
    earlier = page.get_by_role("button", name="Show earlier lines")
    earlier.click()
    expect(lines).to_have_count(4)
    while earlier.count():
        shown = lines.count()
        earlier.click()
        expect(lines).not_to_have_count(shown)
    expect(lines).to_have_count(total)  # every line once, in order
    texts = lines.locator(".log-msg").all_inner_texts()
    sleeping = [t for t in texts if t.startswith("still sleeping")]
    assert sleeping == [f"still sleeping ({n}/5)" for n in range(1, 6)]

    # Level: nothing this run logged is a warning.
    page.select_option('#log-filters select[name="level"]', "WARNING")
    page.get_by_role("button", name="Filter").last.click()
    expect(page.locator("#logs")).to_contain_text("No log lines match.")
    expect(page).to_have_url(re.compile(r"level=WARNING"))


def test_logs_filtered_by_task(page: Page, stack: Stack, sync_client: SyncClient) -> None:
    run = sync_client.create_flow_run(
        "etl/default", parameters={"sources": 2, "flaky": 0.0}, tags=[_tag()]
    )
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(_state(page)).to_have_text("Completed", timeout=WAIT_MS)
    expect(page.locator("#logs")).to_contain_text("loaded 20 rows", timeout=WAIT_MS)
    page.select_option('#log-filters select[name="task"]', label="load-0")
    page.get_by_role("button", name="Filter").last.click()
    expect(page.locator("#logs .log-line")).to_have_count(1)
    expect(page.locator("#logs")).to_contain_text("loaded 20 rows")
    page.select_option('#log-filters select[name="task"]', "flow")
    page.get_by_role("button", name="Filter").last.click()
    expect(page.locator("#logs")).not_to_contain_text("loaded 20 rows")
    expect(page.locator("#logs .log-line")).not_to_have_count(0)


def test_several_states_at_once_with_what_is_applied_shown(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    tag = _tag()
    done = sync_client.create_flow_run("hello-world/default", tags=[tag])
    stopped = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 300}, tags=[tag])
    sync_client.cancel_flow_run(stopped.id)
    page.goto(f"{stack.url}/runs?tag={tag}")
    expect(page.locator(f'tr[data-run-id="{done.id}"] .state')).to_have_text(
        "Completed", timeout=WAIT_MS
    )
    expect(page.locator(f'tr[data-run-id="{stopped.id}"] .state')).to_have_text(
        "Cancelled", timeout=WAIT_MS
    )
    page.locator("#state-filter summary").click()
    page.check('#state-filter input[value="COMPLETED"]')
    page.check('#state-filter input[value="CANCELLED"]')
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#state-filter .multi-value")).to_have_text("COMPLETED, CANCELLED")
    expect(page.locator("#applied")).to_contain_text("state: COMPLETED")
    expect(page.locator("#applied")).to_contain_text("state: CANCELLED")
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(2)
    expect(page.locator("#run-total")).to_have_text("2 runs")
    screenshot(page, "runs-multi-state")
    page.locator("#applied a", has_text="state: CANCELLED").click()
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(1)
    expect(page.locator(f'tr[data-run-id="{done.id}"]')).to_be_visible()
    expect(page.locator("#run-total")).to_have_text("1 run")
    # A time range: the last hour holds them, and the chart counts them.
    page.select_option('select[name="range"]', "1h")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#runs tr[data-run-id]")).to_have_count(1)
    expect(page.locator("#activity rect[data-state=COMPLETED]")).to_have_count(1)


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


def _reload_until(page: Page, locator: Locator) -> None:
    """The scheduler creates runs on its own time: read the page again until they show."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not locator.count():
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
    _reload_until(page, upcoming)
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
    tag = _tag()
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


def test_times_are_shown_in_the_browsers_zone_with_utc_on_hover(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    run = sync_client.create_flow_run("hello-world/default", tags=[_tag()])
    page.goto(f"{stack.url}/runs/{run.id}")
    started = page.locator("#run-detail dl time").first
    expect(started).to_have_attribute("data-local", "1")
    expect(started).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    # The text is the same instant in the browser's zone, as the browser computes it.
    shown, expected = started.evaluate(
        """el => {
          const d = new Date(el.getAttribute('datetime'));
          const p = n => String(n).padStart(2, '0');
          return [el.textContent, d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' +
            p(d.getDate()) + ' ' + p(d.getHours()) + ':' + p(d.getMinutes()) + ':' +
            p(d.getSeconds())];
        }"""
    )
    assert shown == expected and "UTC" not in shown


def test_overview_picture(page: Page, stack: Stack) -> None:
    """The runs page with what the tests above left, for review (tests/ui/screenshots/)."""
    page.goto(f"{stack.url}/runs")
    expect(page.locator("#live-status")).to_have_text("live")
    screenshot(page, "runs")
