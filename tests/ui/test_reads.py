"""What the new views read from a real stack: totals, exact paging of upcoming runs,
what a runner serves, the slot label, and pages of logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.client import Client
from services.orchestrator import Orchestrator
from services.ui._logs import LogFilter, log_page
from services.ui._reads import read_runners
from services.ui._runlist import RunQuery
from shared import names
from shared.codec import encode
from shared.messages import LogRecord, RegisterDeployment

pytestmark = pytest.mark.anyio


async def test_a_list_counts_every_match_only_when_asked(
    orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    for _ in range(3):
        await client.create_flow_run(flow_name="ui-count", tags=[unique])
    counted = await client.list_flow_runs(tags=[unique], limit=1, count=True)
    assert counted.total == 3 and len(counted.flow_runs) == 1
    assert (await client.list_flow_runs(tags=[unique], limit=1)).total is None
    assert (await client.list_flow_runs(tags=[unique], states=["FAILED"], count=True)).total == 0


async def test_upcoming_runs_page_soonest_first_and_recent_ones_newest_first(
    orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    await client.register_deployment(
        RegisterDeployment(name=unique, flow_name="ui-upcoming", queue=f"nobody-{unique}")
    )
    now = datetime.now(UTC)
    ahead = [
        await client.create_flow_run(
            f"ui-upcoming/{unique}", scheduled_start_time=now + timedelta(hours=h)
        )
        for h in (5, 1, 3, 2, 4)
    ]
    past = [await client.create_flow_run(f"ui-upcoming/{unique}") for _ in range(2)]
    soonest = [r.id for r in sorted(ahead, key=lambda r: r.expected_start_time)]
    now = datetime.now(UTC)  # the runs just made are due: recent, not upcoming

    upcoming = RunQuery(deployment=f"ui-upcoming/{unique}", upcoming=True)
    first = await upcoming.page(client, now, limit=2)
    assert [r.id for r in first.flow_runs] == soonest[:2]
    assert first.total == 5 and first.next_offset == 2
    second = await RunQuery(deployment=upcoming.deployment, upcoming=True, offset=2).page(
        client, now, limit=2
    )
    last = await RunQuery(deployment=upcoming.deployment, upcoming=True, offset=4).page(
        client, now, limit=2
    )
    assert [r.id for r in second.flow_runs + last.flow_runs] == soonest[2:]
    assert last.next_offset is None

    recent = await RunQuery(deployment=upcoming.deployment).page(
        client, datetime.now(UTC), limit=10
    )
    assert [r.id for r in recent.flow_runs] == [r.id for r in reversed(past)]
    assert recent.total == 2
    assert await upcoming.count_other_tab(client, datetime.now(UTC)) == 2


async def test_a_heartbeat_says_what_the_runner_serves(
    orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    await client.heartbeat(
        f"r-{unique}",
        interval=5,
        limit=2,
        runs={},
        queues=["nightly"],
        deployments=["etl/default"],
    )
    (view,) = [
        v for v in await read_runners(client, datetime.now(UTC)) if v.status.runner == f"r-{unique}"
    ]
    assert view.alive and view.status.queues == ["nightly"]
    assert view.status.deployments == ["etl/default"]


async def test_logs_a_page_at_a_time_with_filters(
    orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    run = await client.create_flow_run(flow_name="ui-logs", tags=[unique])
    js = client.nc.jetstream()
    at = datetime.now(UTC)
    for n in range(7):
        record = LogRecord(
            flow_run_id=run.id,
            timestamp=at + timedelta(milliseconds=n),
            level=40 if n == 3 else 20,
            message=f"line {n}",
            task_run_id="task-a" if n % 2 else None,
        )
        await js.publish(names.logs_subject(run.id), encode(record))

    def texts(page: object) -> list[str]:
        return [line.record.message for line in page.lines]  # type: ignore[attr-defined]

    newest = await log_page(client.nc, run.id, LogFilter(), limit=3)
    assert texts(newest) == ["line 4", "line 5", "line 6"] and newest.earlier is not None
    before = await log_page(client.nc, run.id, LogFilter(), before=newest.earlier, limit=3)
    assert texts(before) == ["line 1", "line 2", "line 3"]
    oldest = await log_page(client.nc, run.id, LogFilter(), before=before.earlier, limit=3)
    assert texts(oldest) == ["line 0"] and oldest.earlier is None

    assert texts(await log_page(client.nc, run.id, LogFilter(level=30))) == ["line 3"]
    tasks = await log_page(client.nc, run.id, LogFilter(task="task-a"))
    assert texts(tasks) == ["line 1", "line 3", "line 5"]
    flow_only = await log_page(client.nc, run.id, LogFilter(task="flow"))
    assert texts(flow_only) == ["line 0", "line 2", "line 4", "line 6"]
    assert newest.last_seq == flow_only.last_seq  # where the live lines start

    nothing = await log_page(client.nc, "00000000-0000-0000-0000-00000000dead", LogFilter())
    assert nothing.lines == [] and nothing.earlier is None and nothing.last_seq == 0


async def test_a_long_log_pages_back_to_its_first_line(
    orchestrator: Orchestrator, client: Client, unique: str
) -> None:
    # More lines than the first window of sequences read back from the end.
    run = await client.create_flow_run(flow_name="ui-long-log", tags=[unique])
    js = client.nc.jetstream()
    at = datetime.now(UTC)
    for n in range(1300):
        record = LogRecord(
            flow_run_id=run.id,
            timestamp=at + timedelta(milliseconds=n),
            level=40 if n == 0 else 20,
            message=f"line {n}",
        )
        await js.publish(names.logs_subject(run.id), encode(record))

    seen: list[str] = []
    page = await log_page(client.nc, run.id, LogFilter(), limit=500)
    seen[:0] = [line.record.message for line in page.lines]
    while page.earlier is not None:
        page = await log_page(client.nc, run.id, LogFilter(), before=page.earlier, limit=500)
        seen[:0] = [line.record.message for line in page.lines]
    assert seen == [f"line {n}" for n in range(1300)]
    # A filter matching only the first line reads back as far as it takes.
    errors = await log_page(client.nc, run.id, LogFilter(level=40), limit=10)
    assert [line.record.message for line in errors.lines] == ["line 0"]
