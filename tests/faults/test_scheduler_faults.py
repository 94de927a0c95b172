"""Schedulers restarted at random moments, two side by side: each slot gets one run."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import anyio
import pytest

from engine.client import Client
from shared.messages import RegisterDeployment
from shared.models import DeploymentSchedule, IntervalSchedule
from shared.settings import Settings

from ._history import History
from ._stack import Stack, verify, wait_heartbeat

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

SECONDS = 12.0


async def test_schedulers_restarted_at_random_moments_side_by_side(
    stack: Stack, fast: Settings, history: History, rng: random.Random, seed: int
) -> None:
    stack.env |= {"SLUICE_SCHEDULE_HORIZON_SECONDS": "3", "SLUICE_LATE_AFTER_SECONDS": "5"}
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    schedulers = [stack.service("services.scheduler", name=f"scheduler-{i}") for i in range(2)]
    async with Client(fast) as c:
        dep = await c.register_deployment(
            RegisterDeployment(
                name="d",
                flow_name="ticking",
                entrypoint="x.py:f",
                path=".",
                concurrency_limit=1,
                schedules=[DeploymentSchedule(schedule=IntervalSchedule(interval=1.0))],
            )
        )
        runner = stack.runner("r", dep.id, limit=2)
        await wait_heartbeat(fast, "r", runner)
        started = anyio.current_time()
        restarts = 0
        while anyio.current_time() - started < SECONDS:
            await anyio.sleep(rng.uniform(0.3, 2.0))
            victim = rng.choice(schedulers)
            victim.kill()
            await anyio.sleep(rng.uniform(0, 1.0))
            victim.start()
            restarts += 1
        for s in schedulers:
            s.stop()
        await c.pause_deployment(id=dep.id)
        report = await verify(fast, history, [dep.id], finished=False, seed=seed)
        runs = (await c.list_flow_runs(deployment=dep.id, limit=1000)).flow_runs
    slots = sorted(r.expected_start_time for r in runs)
    # Every one-second slot from the first to well before the end has its run: a
    # restarted scheduler catches up what it missed, the other one never doubles it.
    steps = [(b - a) for a, b in itertools.pairwise(slots)]
    assert all(step == timedelta(seconds=1) for step in steps), steps
    assert len(slots) >= SECONDS - 2
    print(f"{restarts} scheduler restarts, {len(slots)} slots, max Running {report.max_running}")
