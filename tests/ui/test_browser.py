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
from shared.models import DeploymentSchedule, IntervalSchedule

from .conftest import WAIT_MS, Stack, screenshot

pytestmark = pytest.mark.slow


def _tag() -> str:
    return f"ui-{uuid.uuid4().hex[:8]}"


def _state(page: Page) -> object:
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
    _assert_not_reloaded(page)

    # Filters: by state and by deployment, as the form sends them.
    page.select_option('select[name="state"]', "FAILED")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#runs")).to_contain_text("No flow runs match.")
    page.select_option('select[name="state"]', "COMPLETED")
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
    screenshot(page, "run-waiting")
    # The slot comes free when the first run is cancelled; the second then runs, live.
    sync_client.cancel_flow_run(first.id)
    expect(page.locator("#run-detail h1 .state")).to_have_text("Completed", timeout=WAIT_MS)
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


def test_overview_picture(page: Page, stack: Stack) -> None:
    """The runs page with what the tests above left: the README's picture comes from here."""
    page.goto(f"{stack.url}/runs")
    expect(page.locator("#live-status")).to_have_text("live")
    screenshot(page, "runs")
