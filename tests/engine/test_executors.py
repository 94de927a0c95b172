"""Executors: the local default, threads, and a real Dask LocalCluster."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from engine import triggers
from engine._core.context import get_run_context
from engine.executors import ConcurrentExecutor, DaskExecutor, LocalExecutor, ThreadPoolExecutor
from engine.flows import flow
from engine.tasks import task
from shared.states import StateType


def test_local_executor_runs_at_once() -> None:
    with LocalExecutor() as ex:
        ok = ex.submit(lambda x: x + 1, 1)
        bad = ex.submit(lambda: 1 / 0)
    assert ok.done() and ex.wait(ok) == 2
    with pytest.raises(ZeroDivisionError):
        ex.wait(bad)


def test_thread_pool_executor_contract() -> None:
    assert ConcurrentExecutor is ThreadPoolExecutor
    with pytest.raises(ValueError):
        ThreadPoolExecutor(0)
    ex = ThreadPoolExecutor(2)
    with pytest.raises(RuntimeError, match="not started"):
        ex.submit(print)
    with ex:
        handle = ex.submit(threading.get_ident)
        assert ex.wait(handle, timeout=5) != threading.get_ident()
    clone = ex.clone()
    assert clone is not ex and clone.max_workers == 2


def test_thread_executor_runs_tasks_concurrently(runtime) -> None:
    barrier = threading.Barrier(4, timeout=10)

    @task
    def meet(i: int) -> int:
        barrier.wait()  # passes only if four runs are in flight at once
        return i

    @flow(executor=ThreadPoolExecutor(max_workers=4))
    def pipeline() -> list:
        return [f.result() for f in meet.map(range(4))]

    assert pipeline() == [0, 1, 2, 3]


def test_thread_executor_dependencies_retries_and_context(runtime, reporter) -> None:
    calls = []

    @task
    def source(x: int) -> int:
        return x

    @task(retries=1)
    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) == 1:
            raise OSError("first")
        return x * 10

    @task
    def who() -> str:
        return get_run_context().run.name

    @task(trigger=triggers.all_finished)
    def after(values: list) -> int:
        return len(values)

    @flow(executor=ThreadPoolExecutor(max_workers=1))
    def pipeline():
        a = source.submit(1)
        b = flaky.submit(a)
        c = after.submit([a, b])
        return b.result(), who.submit().result(), c.result()

    assert pipeline() == (10, "who-0", 2)
    assert [s.name for s in reporter.task_states("flaky-0")][-2:] == ["Retrying", "Completed"]


def test_thread_executor_with_async_tasks(runtime) -> None:
    @task
    async def twice(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @flow(executor=ThreadPoolExecutor(2))
    def pipeline() -> list:
        return [f.result() for f in twice.map([1, 2, 3])]

    assert pipeline() == [2, 4, 6]


@pytest.mark.anyio
async def test_thread_executor_in_an_async_flow(runtime) -> None:
    @task
    def square(x: int) -> int:
        return x * x

    @flow(executor=ThreadPoolExecutor(2))
    async def pipeline() -> list:
        return [await f for f in square.map(range(4))]

    assert await pipeline() == [0, 1, 4, 9]


def test_each_run_gets_its_own_executor(runtime) -> None:
    configured = ThreadPoolExecutor(2)

    @task
    def noop() -> None:
        pass

    @flow(executor=configured)
    def inner() -> None:
        noop.submit()

    @flow(executor=configured)
    def outer() -> None:
        noop.submit()
        inner()  # a nested run of the same configuration does not share the pool

    outer()
    assert configured._pool is None  # the configuration itself was never started


# --- Dask --------------------------------------------------------------------------------------
def _cube(x: int) -> int:
    return x**3


cube = task(_cube, name="cube")


@task(retries=1)
def dask_flaky(marker: str, key: str) -> str:
    """Fails on its first attempt (a marker file remembers it, even across processes).

    ``key`` would collide with ``Client.submit``'s own argument if passed through.
    """
    path = Path(marker)
    if not path.exists():
        path.touch()
        raise RuntimeError("first attempt fails")
    return f"retried-{key}"


@task
async def async_inc(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


@pytest.mark.slow
def test_dask_local_cluster(runtime, reporter, tmp_path) -> None:
    pytest.importorskip("distributed")
    executor = DaskExecutor(
        cluster_kwargs={
            "processes": False,
            "n_workers": 1,
            "threads_per_worker": 2,
            "dashboard_address": None,
        }
    )

    @task
    def fails() -> None:
        raise LookupError("on the cluster")

    @flow(executor=executor)
    def pipeline(n: int):
        cubes = cube.map(range(n))
        total = sum(f.result() for f in cubes)
        retried = dask_flaky.submit(str(tmp_path / "marker"), key="k")
        incremented = async_inc.submit(cube.submit(2))
        failed = fails.submit()
        return total, retried.result(), incremented.result(), failed.wait()

    total, retried, incremented, failed = pipeline(10)
    assert total == sum(i**3 for i in range(10))
    assert retried == "retried-k"
    assert incremented == 9
    assert failed.type is StateType.FAILED and "LookupError: on the cluster" in failed.message
    assert [s.name for s in reporter.task_states("dask_flaky-0")][-2:] == ["Retrying", "Completed"]


@pytest.mark.slow
def test_dask_executor_against_an_address(runtime) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as cluster:

        @flow(executor=DaskExecutor(cluster.scheduler_address))
        def pipeline(xs: list[int]) -> list[int]:
            return [f.result() for f in cube.map(xs)]

        assert pipeline([1, 2]) == [1, 8]
        assert cluster.scheduler is not None  # left running for its owner
