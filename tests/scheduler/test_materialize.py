"""Schedules become Scheduled runs ahead of time, exactly once per slot."""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from services.dev import NatsServer
from services.scheduler._slots import parse_key
from shared.errors import FlowRunNotFound, MalformedRequest
from shared.messages import RegisterDeployment
from shared.models import (
    CronSchedule,
    DeploymentSchedule,
    IntervalSchedule,
    RRuleSchedule,
    Schedule,
)
from shared.states import StateType

from .conftest import START, Stack

pytestmark = pytest.mark.anyio

EVERY_MINUTE = IntervalSchedule(interval=60)


def slots_of(runs: list) -> list[datetime]:
    return [r.expected_start_time for r in runs]


def minutes(*ms: int) -> list[datetime]:
    return [START + timedelta(minutes=m) for m in ms]


async def test_upcoming_runs_fill_the_horizon_and_follow_time(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("horizon", EVERY_MINUTE)  # horizon 600 s
    runs = await stack.runs("flow/horizon")
    assert slots_of(runs) == minutes(*range(1, 11))
    assert {r.state.name for r in runs} == {"Scheduled"}
    assert all(r.idempotency_key and r.idempotency_key.startswith("schedule:") for r in runs)
    assert all("auto-scheduled" in r.tags for r in runs)

    await stack.advance(150)  # slots 1 and 2 came due; the horizon moved on
    runs = await stack.runs("flow/horizon")
    assert slots_of(runs) == minutes(*range(1, 13))


async def test_at_least_min_runs_beyond_a_short_horizon(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("daily", CronSchedule(cron="0 9 * * *"))
    runs = await stack.runs("flow/daily")
    expected = [START + timedelta(days=d, hours=9) for d in range(3)]
    assert slots_of(runs) == expected


async def test_parameter_overrides_and_several_schedules(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy(
        "multi",
        DeploymentSchedule(schedule=CronSchedule(cron="*/5 * * * *"), parameters={"who": "cron"}),
        DeploymentSchedule(schedule=IntervalSchedule(interval=240), parameters={"who": "every"}),
        DeploymentSchedule(schedule=RRuleSchedule(rrule="FREQ=MINUTELY;INTERVAL=7"), active=False),
    )
    runs = await stack.runs("flow/multi")
    by_who = Counter(r.parameters["who"] for r in runs)
    assert by_who == {"cron": 3, "every": 3}  # 600 s horizon: 5,10 / 4,8 + min runs


async def test_invalid_schedule_text_is_refused_naming_the_field(stack: Stack) -> None:
    cases: list[tuple[Schedule, str]] = [
        (CronSchedule(cron="61 * * * *"), "schedules[1].schedule.cron"),
        (RRuleSchedule(rrule="FREQ=SOMETIMES"), "schedules[1].schedule.rrule"),
        (CronSchedule(cron="* * * * *", timezone="Mars/Base"), "schedules[1].schedule.timezone"),
    ]
    for schedule, field in cases:
        req = RegisterDeployment(
            name="bad",
            flow_name="flow",
            schedules=[
                DeploymentSchedule(schedule=EVERY_MINUTE),
                DeploymentSchedule(schedule=schedule),
            ],
        )
        with pytest.raises(MalformedRequest, match=field.replace("[", r"\[").replace("]", r"\]")):
            await stack.client.register_deployment(req)


async def test_a_restart_mid_horizon_neither_duplicates_nor_skips(stack: Stack) -> None:
    first = await stack.start_scheduler()
    await stack.deploy("restart", EVERY_MINUTE)
    await stack.advance(90)
    await stack.stop_scheduler(first)
    stack.clock.advance(200)  # down for three slots, well inside the catch-up window
    await stack.start_scheduler()
    await stack.settle()
    runs = await stack.runs("flow/restart")
    assert Counter(slots_of(runs)) == Counter(minutes(*range(1, 15)))  # one run per slot
    offered = {o.flow_run_id for o in await stack.offers()}
    due = [r for r in runs if r.expected_start_time <= stack.clock.now()]
    assert {r.id for r in due} <= offered  # the ones missed while down were offered on start


async def test_two_schedulers_at_once_create_each_run_once(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.start_scheduler()
    await stack.deploy("twice", EVERY_MINUTE, CronSchedule(cron="*/2 * * * *"))
    for _ in range(5):
        await stack.advance(61)
    runs = await stack.runs("flow/twice")
    keys = Counter(r.idempotency_key for r in runs)
    assert keys and max(keys.values()) == 1
    keyed = [(parse_key(r.idempotency_key), r.expected_start_time) for r in runs]
    per_schedule = Counter((key.digest, slot) for key, slot in keyed if key is not None)
    assert max(per_schedule.values()) == 1
    offers = Counter(o.flow_run_id for o in await stack.offers())
    assert offers and max(offers.values()) == 1  # same Nats-Msg-Id: stored once


async def test_pause_removes_upcoming_runs_and_resume_creates_them_again(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("pause", EVERY_MINUTE)
    before = await stack.runs("flow/pause")
    assert before
    # A run someone created by hand, due within the horizon: never the scheduler's.
    manual = await stack.client.create_flow_run(
        "flow/pause", scheduled_start_time=START + timedelta(minutes=5, seconds=30)
    )
    await stack.client.pause_deployment("flow/pause")
    await stack.settle()
    assert [r.id for r in await stack.runs("flow/pause")] == [manual.id]  # no Cancelled rows
    for gone in before:
        with pytest.raises(FlowRunNotFound):
            await stack.client.read_flow_run(gone.id)

    await stack.advance(120)  # nothing is created while paused
    assert [r.id for r in await stack.runs("flow/pause")] == [manual.id]

    await stack.client.resume_deployment("flow/pause")
    await stack.settle()
    live = [r for r in await stack.runs("flow/pause", states=["SCHEDULED"]) if r.id != manual.id]
    assert slots_of(live) == minutes(*range(3, 13))  # from now on, not the paused past
    # The same slot keys as before the pause: deleting freed them.
    assert {parse_key(r.idempotency_key) for r in live} >= {
        parse_key(r.idempotency_key) for r in before if r.expected_start_time >= minutes(3)[0]
    }
    assert all(r.idempotency_key and not r.idempotency_key.endswith(":r1") for r in live)

    await stack.client.pause_deployment("flow/pause")
    await stack.settle()
    await stack.client.resume_deployment("flow/pause")
    await stack.settle()
    every = await stack.runs("flow/pause")
    assert not [r for r in every if r.state.type is StateType.CANCELLED]
    live = [r for r in every if r.id != manual.id]
    assert Counter(slots_of(live)) == Counter(minutes(*range(3, 13)))
    kept = await stack.client.read_flow_run(manual.id)
    assert kept.state.type is StateType.SCHEDULED


async def test_changing_a_schedule_replaces_its_runs(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("change", EVERY_MINUTE, CronSchedule(cron="0 * * * *"))
    await stack.deploy("change", IntervalSchedule(interval=120), CronSchedule(cron="0 * * * *"))
    live = await stack.runs("flow/change", states=["SCHEDULED"])
    interval = [r for r in live if r.expected_start_time.minute != 0]
    assert slots_of(interval) == minutes(2, 4, 6, 8, 10)
    hourly = [r for r in live if r.expected_start_time.minute == 0]
    assert len(hourly) == 3  # untouched by the change: same runs as before
    assert not await stack.runs("flow/change", states=["CANCELLED"])  # removed, not cancelled


async def test_a_new_version_takes_over_the_schedules(stack: Stack) -> None:
    await stack.start_scheduler()
    old = await stack.deploy("versions", EVERY_MINUTE, version="1")
    stack.clock.advance(1)  # versions are ordered by creation time
    new = await stack.deploy("versions", EVERY_MINUTE, version="2")
    live = await stack.runs("flow/versions", states=["SCHEDULED"])
    assert {r.deployment_id for r in live} == {new.id}
    assert not [r for r in await stack.runs("flow/versions") if r.deployment_id == old.id]


async def test_deleting_a_deployment_removes_its_upcoming_runs(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("doomed", EVERY_MINUTE)
    await stack.client.delete_deployment("flow/doomed")
    await stack.settle()
    assert not await stack.runs(states=["SCHEDULED"])


async def test_changes_made_while_no_scheduler_ran_are_applied_on_start(stack: Stack) -> None:
    first = await stack.start_scheduler()
    await stack.deploy("offline", EVERY_MINUTE)
    await stack.stop_scheduler(first)
    await stack.client.pause_deployment("flow/offline")
    await stack.start_scheduler()
    await stack.settle()
    assert not await stack.runs("flow/offline", states=["SCHEDULED"])


async def test_catch_up_window_skips_old_missed_slots_without_a_storm(stack: Stack) -> None:
    first = await stack.start_scheduler(schedule_horizon_seconds=120.0)
    window = DeploymentSchedule(schedule=EVERY_MINUTE, catchup_window_seconds=150)
    await stack.deploy("catchup", window)
    await stack.stop_scheduler(first)
    stack.clock.advance(30 * 60)  # down for half an hour
    await stack.start_scheduler(schedule_horizon_seconds=120.0)
    await stack.settle()
    runs = await stack.runs("flow/catchup")
    now = stack.clock.now()
    past = [r for r in runs if r.expected_start_time <= now]
    # Created before the outage: minutes 1-3, now far outside the window.
    old = [r for r in past if r.expected_start_time < now - timedelta(seconds=150)]
    assert slots_of(old) == minutes(1, 2, 3)
    assert all(r.state.type is StateType.CANCELLED for r in old)
    assert all("catch-up window" in (r.state.message or "") for r in old)
    # Missed slots inside the window: created and offered; older ones never created.
    recent = [r for r in past if r not in old]
    assert slots_of(recent) == minutes(28, 29, 30)
    offered = {o.flow_run_id for o in await stack.offers()}
    assert {r.id for r in recent} <= offered
    assert len(runs) < 10  # no storm


async def test_daylight_saving_days_in_berlin_run_the_0230_job_once(stack: Stack) -> None:
    stack.clock.set(datetime(2030, 3, 30, 12, tzinfo=UTC))
    await stack.start_scheduler(schedule_min_runs=1, schedule_horizon_seconds=86400.0)
    berlin = CronSchedule(cron="30 2 * * *", timezone="Europe/Berlin")
    await stack.deploy("dst", berlin)
    for _ in range(6):
        await stack.advance(12 * 3600)
    runs = await stack.runs("flow/dst")
    assert slots_of(runs)[:3] == [
        datetime(2030, 3, 31, 1, 30, tzinfo=UTC),  # 03:30 CEST: 02:30 did not exist
        datetime(2030, 4, 1, 0, 30, tzinfo=UTC),
        datetime(2030, 4, 2, 0, 30, tzinfo=UTC),
    ]
    assert Counter(slots_of(runs)).most_common(1)[0][1] == 1


async def test_the_scheduler_follows_on_after_nats_restarts(
    stack: Stack, sched_server: NatsServer
) -> None:
    scheduler = await stack.start_scheduler()
    await stack.deploy("before", EVERY_MINUTE)
    sched_server.stop()
    sched_server.start()  # same port, same data
    with anyio.fail_after(30):  # the feeds resubscribe and rebuild after the reconnect
        while scheduler.runs.rebuilds < 2:
            with contextlib.suppress(Exception):  # NATS may still be reconnecting
                await scheduler.settle(timeout=5)
    await stack.deploy("after", IntervalSchedule(interval=120))
    assert len(await stack.runs("flow/after", states=["SCHEDULED"])) == 5
    await stack.advance(60)
    offered = {o.flow_run_id for o in await stack.offers()}
    first = (await stack.runs("flow/before"))[0]
    assert first.id in offered
