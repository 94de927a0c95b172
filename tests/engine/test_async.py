"""Async flows and tasks."""

from __future__ import annotations

import asyncio

import pytest

from engine import states
from engine.flows import flow
from engine.tasks import task
from shared.states import StateType


@task
async def slow_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@task
def inc(x: int) -> int:
    return x + 1


@task
async def fail_async() -> None:
    raise ValueError("async boom")


def test_asyncio_run_of_an_async_flow(runtime) -> None:
    @flow
    async def pipeline(x: int) -> int:
        return await slow_double(x)

    assert asyncio.run(pipeline("4")) == 8


@pytest.mark.anyio
async def test_async_flow_mixes_sync_and_async_tasks(runtime) -> None:
    @flow
    async def pipeline(x: int) -> list:
        a = await slow_double(x)  # direct call: awaited here
        b = inc(a)  # a sync task called in an async flow runs inline
        c = slow_double.submit(b)  # an asyncio task on this loop
        d = inc.submit(c)  # waits for c without blocking the loop
        return [a, b, await c, await d.result_async(), d.result()]

    assert await pipeline(1) == [2, 3, 6, 7, 7]


@pytest.mark.anyio
async def test_submitted_async_tasks_run_concurrently(runtime) -> None:
    started = []
    gate = asyncio.Event()

    @task
    async def waiter(i: int) -> int:
        started.append(i)
        if len(started) == 3:
            gate.set()
        await asyncio.wait_for(gate.wait(), 5)
        return i

    @flow
    async def pipeline() -> list:
        futures = waiter.map(range(3))
        return [await f for f in futures]

    assert await pipeline() == [0, 1, 2]


@pytest.mark.anyio
async def test_async_failures_and_states(runtime, reporter) -> None:
    @flow(name="async-broken")
    async def pipeline() -> None:
        fail_async.submit()

    state = await pipeline(return_state=True)
    assert state.type is StateType.FAILED and "async boom" in state.message
    with pytest.raises(ValueError, match="async boom"):
        await pipeline()


@pytest.mark.anyio
async def test_async_retries_use_the_clock(runtime, reporter, clock) -> None:
    calls = []

    @task(retries=2, retry_delay_seconds=[3, 4])
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("again")
        return "ok"

    @flow
    async def pipeline() -> str:
        return await flaky()

    start = clock.now()
    assert await pipeline() == "ok"
    waits = [s for s in reporter.task_states("flaky-0") if s.name == "AwaitingRetry"]
    assert [(w.details.scheduled_time - start).total_seconds() for w in waits] == [3, 7]


@pytest.mark.anyio
async def test_async_flow_timeout_cancels_its_tasks(runtime, reporter) -> None:
    @task
    async def forever() -> None:
        await asyncio.sleep(60)

    @flow(name="async-timeout", timeout_seconds=0.05)
    async def pipeline() -> None:
        forever.submit()
        await asyncio.sleep(60)

    state = await pipeline(return_state=True)
    assert (state.type, state.name) == (StateType.FAILED, states.TIMED_OUT)
    assert reporter.task_states("forever-0")[-1].type is StateType.CANCELLED


@pytest.mark.anyio
async def test_async_task_timeout(runtime) -> None:
    @task(timeout_seconds=0.01)
    async def too_slow() -> None:
        await asyncio.sleep(60)

    @flow
    async def pipeline():
        return await too_slow(return_state=True)

    state = await pipeline()
    assert state.name == states.TIMED_OUT


@pytest.mark.anyio
async def test_run_async_and_async_subflow(runtime) -> None:
    @flow(name="child")
    async def child(x: int) -> int:
        return await slow_double(x)

    @flow(name="parent")
    async def parent() -> int:
        return await child(5)

    result = await parent.run_async(return_tasks=["slow_double"])
    assert result.result() == 10
    # the child's task runs are not the parent's
    assert result.task_runs["slow_double"] == ()


def test_async_task_outside_a_flow() -> None:
    assert asyncio.run(slow_double(2)) == 4


def test_async_task_submitted_from_a_sync_flow(runtime) -> None:
    @flow
    def pipeline() -> int:
        return slow_double.submit(3).result()

    assert pipeline() == 6


def test_sync_subflow_inside_an_async_flow(runtime) -> None:
    @flow(name="sync-child")
    def sync_child(x: int) -> int:
        # an async task submitted from a sync flow runs on a private loop
        return inc(x) + slow_double.submit(x).result()

    @flow
    async def parent() -> int:
        return sync_child(1)

    assert asyncio.run(parent()) == 4


@pytest.mark.anyio
async def test_sync_flow_called_from_a_running_loop(runtime) -> None:
    @flow
    def sync_flow(x: int) -> int:
        return slow_double.submit(x).result()

    assert sync_flow(5) == 10
