"""Load: trivial runs through two runners under a deployment concurrency limit.

2,000 runs by default; ``SLUICE_SOAK=1`` makes it a 20,000-run soak (or set
``SLUICE_SOAK_RUNS``). Prints runs/s and the most runs Running at once; the
checker then verifies every invariant over the whole history.
"""

from __future__ import annotations

import os
import time

import anyio
import pytest

from engine.client import Client
from shared.messages import RegisterDeployment
from shared.settings import Settings

from ._history import History
from ._load import Driver
from ._stack import ROOT, Stack, verify, wait_heartbeat

pytestmark = pytest.mark.anyio

SOAK = os.environ.get("SLUICE_SOAK", "") not in ("", "0")
RUNS = int(os.environ.get("SLUICE_SOAK_RUNS", "20000" if SOAK else "2000"))
LIMIT = 6


@pytest.mark.timeout(3600 if SOAK else 300)
async def test_thousands_of_runs_through_two_runners(
    stack: Stack, fast: Settings, history: History
) -> None:
    # No faults here: leases of a normal length, so a busy machine does not pass for a dead runner.
    stack.env |= {
        "SLUICE_LOG_LEVEL": "WARNING",
        "SLUICE_REQUEST_TIMEOUT": "10",
        "SLUICE_HEARTBEAT_INTERVAL": "3",
        "SLUICE_SLOT_LEASE": "10",
    }
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await c.register_deployment(
            RegisterDeployment(
                name="load",
                flow_name="noop",
                entrypoint="bench/_noop_flow.py:noop",
                path=str(ROOT),
                concurrency_limit=LIMIT,
            )
        )
        runners = {
            name: stack.service(
                "services.runner",
                *("--name", name, "--limit", "4", "--queue", "", "--fork"),
                *("--deployment", dep.id),
                name=f"runner-{name}",
            )
            for name in ("one", "two")
        }
        for name, proc in runners.items():
            await wait_heartbeat(fast, name, proc)
        driver = Driver(c, history, "noop/load")
        ids: list[str] = []
        began = time.monotonic()

        async def create(w: int) -> None:
            for i in range(w, RUNS, 8):
                ids.append((await driver.create(f"r{i}")).id)

        async with anyio.create_task_group() as tg:
            for w in range(8):
                tg.start_soon(create, w)
        created = time.monotonic()
        finals = [await c.wait_for_flow_run(run_id) for run_id in ids]
        ended = time.monotonic()
        report = await verify(fast, history, [dep.id], timeout=120)
    assert {f.state.type.value for f in finals} == {"COMPLETED"}, {
        f.state.message for f in finals if f.state.type.value != "COMPLETED"
    }
    again = [(f.id, f.attempt, f.run_count) for f in finals if (f.attempt, f.run_count) != (1, 1)]
    assert not again, again  # each ran exactly once: one claim, one body
    by_runner = {name: sum(f.runner == name for f in finals) for name in runners}
    assert all(by_runner.values())
    peak = report.max_running[dep.id]
    assert peak <= LIMIT
    print(
        f"{RUNS} runs: created in {created - began:.1f}s, all ended after {ended - began:.1f}s "
        f"= {RUNS / (ended - began):.1f} runs/s; per runner {by_runner}; "
        f"max Running at once {peak} (limit {LIMIT})"
    )
