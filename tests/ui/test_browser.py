"""The web UI in a real browser, against a whole running stack (``python -m services.dev``).

Each test isolates its runs with a tag of its own; pictures of every page go
to tests/ui/screenshots/ for review.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import uuid

import pytest
from playwright.sync_api import Page, expect

from engine.sync import SyncClient
from shared.messages import RegisterDeployment

from .conftest import WAIT_MS, Stack, new_tag, run_state, screenshot

pytestmark = pytest.mark.slow


def _mark_page(page: Page) -> None:
    """Leave a marker in the page's JS world: a reload would wipe it."""
    page.evaluate("window.__sluiceMarker = 'kept'")


def _assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sluiceMarker") == "kept"


def test_run_form_starts_a_run_that_completes_live(page: Page, stack: Stack) -> None:
    tag = new_tag()
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
    tag = new_tag()
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
    run = sync_client.create_flow_run(
        "sleepy/default", parameters={"seconds": 300}, tags=[new_tag()]
    )
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
    tag = new_tag()
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
    parent = sync_client.create_flow_run(f"ui-test/{name}", tags=[new_tag()])
    child = sync_client.create_flow_run(flow_name="ui-child", parent_flow_run_id=parent.id)
    page.goto(f"{stack.url}/runs/{parent.id}")
    expect(page.locator("#why-waiting")).to_contain_text("no live runner has taken it yet")
    expect(page.locator("#run-detail")).to_contain_text(child.name)
    page.get_by_role("link", name=child.name).click()
    expect(page.get_by_role("link", name=parent.name)).to_be_visible()
    expect(page.locator("#why-waiting")).to_contain_text("no deployment")


def test_paging_newest_first(page: Page, stack: Stack, sync_client: SyncClient) -> None:
    name = f"many-{uuid.uuid4().hex[:6]}"
    sync_client.register_deployment(
        RegisterDeployment(name=name, flow_name="ui-test", queue="nobody")
    )
    tag = new_tag()
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
        "etl/default", parameters={"sources": 2, "flaky": 1.0}, tags=[new_tag()]
    )
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(run_state(page)).to_have_text("Failed", timeout=WAIT_MS)
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
    run = sync_client.create_flow_run("sleepy/default", parameters={"seconds": 5}, tags=[new_tag()])
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(run_state(page)).to_have_text("Completed", timeout=WAIT_MS)
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
        "etl/default", parameters={"sources": 2, "flaky": 0.0}, tags=[new_tag()]
    )
    page.goto(f"{stack.url}/runs/{run.id}")
    expect(run_state(page)).to_have_text("Completed", timeout=WAIT_MS)
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
    tag = new_tag()
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


def test_times_are_shown_in_the_browsers_zone_with_utc_on_hover(
    page: Page, stack: Stack, sync_client: SyncClient
) -> None:
    run = sync_client.create_flow_run("hello-world/default", tags=[new_tag()])
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
