"""The orchestrator and nats-server SIGKILLed under load; clients retry with their keys."""

from __future__ import annotations

import random

import anyio
import pytest

from engine.client import Client
from services.dev import NatsServer
from shared.messages import RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

from ._history import History
from ._load import Driver
from ._stack import Stack, retry, until, verify, wait_heartbeat, wait_serving

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]


async def register(c: Client, flow: str, limit: int | None = None) -> str:
    spec = RegisterDeployment(
        name="d", flow_name=flow, entrypoint="x.py:f", path=".", concurrency_limit=limit
    )
    return (await retry(lambda: c.register_deployment(spec))).id


async def test_orchestrator_sigkilled_repeatedly_under_creates_and_transitions(
    stack: Stack, fast: Settings, history: History, rng: random.Random, seed: int
) -> None:
    settings = fast
    orch = await stack.orchestrator()
    workers, per_worker, kills = 4, 12, 4
    async with Client(settings) as c:
        dep = await register(c, "churn", limit=2)
        driver = Driver(c, history, "churn/d")

        async def work(w: int) -> None:
            for i in range(per_worker):
                await driver.lifecycle(f"w{w}-{i}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(driver.heartbeats)
            for w in range(workers):
                tg.start_soon(work, w)
            total = workers * per_worker
            for k in range(kills):
                # a random moment within the next share of the load
                target = (k + rng.random()) * total / (kills + 1)
                while driver.done < target:  # noqa: ASYNC110 - waiting on our own load
                    await anyio.sleep(0.02)
                await anyio.sleep(rng.random() * 0.3)
                orch.kill()
                orch.start()
                await wait_serving(settings, orch)
            while driver.done < total:  # noqa: ASYNC110 - waiting on our own load
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        report = await verify(settings, history, [dep], seed=seed)
    assert driver.done == total
    assert len(history.of("create", "ok")) >= total
    assert report.runs == total
    print(
        f"orchestrator SIGKILLed {kills} times; unknown outcomes retried: "
        f"{len([o for o in history.ops if o.outcome == 'unknown'])}"
    )


async def test_nats_server_sigkilled_under_load_and_everything_recovers(
    own_nats: NatsServer,
    stack: Stack,
    fast: Settings,
    history: History,
    rng: random.Random,
    seed: int,
) -> None:
    """Every acknowledged write survives; runners' pull consumers, the watcher's
    event consumer and heartbeat watcher, and the orchestrator recover by themselves."""
    await stack.orchestrator()
    stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await register(c, "faulty", limit=3)
        runners = [stack.runner(n, dep, limit=2) for n in ("a", "b")]
        for name, proc in zip(("a", "b"), runners, strict=True):
            await wait_heartbeat(fast, name, proc)
        driver = Driver(c, history, "faulty/d")
        created: list[str] = []

        async def load() -> None:
            for i in range(40):
                created.append((await driver.create(f"k{i}", sleep=0.2)).id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            while len(created) < 10 + rng.randrange(10):  # noqa: ASYNC110
                await anyio.sleep(0.02)
            own_nats.kill()  # SIGKILL: no goodbye, no flush
            await anyio.sleep(rng.random())
            await anyio.to_thread.run_sync(own_nats.start)
        assert len(created) == 40
        for run_id in created:
            await retry(lambda run_id=run_id: c.wait_for_flow_run(run_id))
        # After the restart, every consumer works again without any restart of ours:
        # runners take new work (pull consumers) ...
        fresh = await driver.create("fresh", sleep=0.2)
        done = await retry(lambda: c.wait_for_flow_run(fresh.id))
        assert done.state.type is StateType.COMPLETED
        # ... the watcher follows events (Cancelling -> kill -> Cancelled) ...
        long = await driver.create("long", sleep=600)
        await until(c, long.id, StateType.RUNNING)
        await history.call("cancel", None, lambda: c.cancel_flow_run(long.id))
        cancelled = await retry(lambda: c.wait_for_flow_run(long.id))
        assert cancelled.state.type is StateType.CANCELLED
        # ... and its heartbeat watcher sees a runner die.
        doomed = await driver.create("doomed", sleep=600)
        run = await until(c, doomed.id, StateType.RUNNING)
        runners["ab".index(run.runner or "a")].kill()
        crashed = await retry(lambda: c.wait_for_flow_run(doomed.id))
        assert crashed.state.type is StateType.CRASHED
        await verify(fast, history, [dep], seed=seed)
    assert len(set(created)) == 40
