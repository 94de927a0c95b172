"""``deployment.backfill`` (served by the scheduler) and ``sluice deployment backfill``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.from_thread
import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.client import Client
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from services.scheduler import Scheduler
from shared import names
from shared.clock import FakeClock
from shared.connection import request
from shared.errors import MalformedRequest
from shared.messages import BackfillDeployment, BackfillReply, RegisterDeployment
from shared.models import CronSchedule, DeploymentSchedule, IntervalSchedule
from shared.settings import Settings
from shared.states import StateType

from .conftest import START, Stack

HOURLY = CronSchedule(cron="0 * * * *")


async def _backfill(stack: Stack, name: str, start: datetime, end: datetime) -> BackfillReply:
    req = BackfillDeployment(name=name, start=start, end=end)
    return await request(stack.client.nc, names.DEPLOYMENT_BACKFILL, req, BackfillReply, timeout=30)


@pytest.mark.anyio
async def test_backfill_creates_missed_runs_once_and_offers_them(stack: Stack) -> None:
    stack.clock.set(START + timedelta(days=1))
    await stack.start_scheduler()
    await stack.deploy("backfill", HOURLY)
    start, end = START + timedelta(hours=2), START + timedelta(hours=5)
    reply = await _backfill(stack, "flow/backfill", start, end)
    assert [r.slot for r in reply.runs] == [start + timedelta(hours=h) for h in range(4)]
    await stack.settle()
    offered = {o.flow_run_id for o in await stack.offers()}
    assert {r.flow_run_id for r in reply.runs} <= offered
    runs = [await stack.client.read_flow_run(r.flow_run_id) for r in reply.runs]
    assert all("backfill" in r.tags for r in runs)

    again = await _backfill(stack, "flow/backfill", start - timedelta(hours=1), end)
    assert [r.flow_run_id for r in again.runs][1:] == [r.flow_run_id for r in reply.runs]


@pytest.mark.anyio
async def test_backfill_fills_slots_the_scheduler_skipped(stack: Stack) -> None:
    await stack.start_scheduler(schedule_horizon_seconds=60.0)
    window = DeploymentSchedule(schedule=IntervalSchedule(interval=60), catchup_window_seconds=60)
    await stack.deploy("skipped", window)
    await stack.stop_scheduler(stack.schedulers[0])
    stack.clock.advance(3600)
    await stack.start_scheduler(schedule_horizon_seconds=60.0)
    await stack.settle()
    skipped = await stack.runs("flow/skipped", states=["CANCELLED"])
    assert skipped
    first = skipped[0].expected_start_time
    reply = await _backfill(stack, "flow/skipped", first, first)
    refilled = await stack.client.read_flow_run(reply.runs[0].flow_run_id)
    assert refilled.id != skipped[0].id and refilled.state.type is StateType.SCHEDULED


@pytest.mark.anyio
async def test_backfill_refuses_bad_ranges(stack: Stack) -> None:
    await stack.start_scheduler()
    every_second = DeploymentSchedule(schedule=IntervalSchedule(interval=1))
    await stack.deploy("ranges", every_second, paused=True)  # backfill ignores the pause
    stack.clock.advance(7200)
    with pytest.raises(MalformedRequest, match="after end"):
        await _backfill(stack, "flow/ranges", START + timedelta(hours=1), START)
    with pytest.raises(MalformedRequest, match="more than 1000 slots"):
        await _backfill(stack, "flow/ranges", START, START + timedelta(hours=1))


# --- the command line ---------------------------------------------------------------------
@pytest.fixture
def cli_stack(
    sched_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    settings = Settings(nats_url=sched_server.url, home=tmp_path / "home")
    monkeypatch.setenv("SLUICE_NATS_URL", sched_server.url)
    monkeypatch.setenv("SLUICE_HOME", str(settings.home))

    async def serve(ready: anyio.Event, done: anyio.Event) -> None:
        clock = FakeClock(START + timedelta(days=1))
        async with (
            Orchestrator(settings, clock=clock, grace=1.0),
            Scheduler(settings, clock=clock, grace=1.0),
            Client(settings) as client,
        ):
            await client.register_deployment(
                RegisterDeployment(
                    name="cli",
                    flow_name="flow",
                    queue="cli",
                    schedules=[DeploymentSchedule(schedule=HOURLY)],
                )
            )
            ready.set()
            await done.wait()

    with anyio.from_thread.start_blocking_portal() as portal:
        ready = portal.call(anyio.Event)
        done = portal.call(anyio.Event)
        future = portal.start_task_soon(serve, ready, done)
        portal.call(ready.wait)
        try:
            yield settings
        finally:
            portal.call(done.set)
            future.result(timeout=30)


def test_cli_backfill_prints_the_runs(cli_stack: Settings) -> None:
    args = ["deployment", "backfill", "flow/cli", "--from", "2030-01-01T03:00", "--to"]
    result = CliRunner().invoke(app, [*args, "2030-01-01T05:30:00Z"])
    assert result.exit_code == 0, result.output
    assert "Backfilled 3 slots of flow/cli" in result.output
    result = CliRunner().invoke(app, [*args, "2030-01-01T05:30:00Z", "--json"])
    reply = json.loads(result.output)
    assert [r["slot"] for r in reply["runs"]] == [
        "2030-01-01T03:00:00Z",
        "2030-01-01T04:00:00Z",
        "2030-01-01T05:00:00Z",
    ]
    assert datetime.fromisoformat(reply["end"]) == datetime(2030, 1, 1, 5, 30, tzinfo=UTC)


def test_cli_backfill_usage_errors(cli_stack: Settings) -> None:
    result = CliRunner().invoke(app, ["deployment", "backfill", "flow/cli"])
    assert result.exit_code == 2 and "--from" in result.output
    result = CliRunner().invoke(
        app, ["deployment", "backfill", "flow/nope", "--from", "2030-01-01T00:00"]
    )
    assert result.exit_code == 1 and "no deployment named 'flow/nope'" in result.output
