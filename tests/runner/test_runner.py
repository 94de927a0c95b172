"""The Runner with real processes against a real stack."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc
import msgspec
import pytest

from engine.client import Client
from engine.deployments import RunnerDeployment
from engine.runner import Runner
from engine.runner._subprocess import SubprocessFlowRunner, explain_exit
from services.orchestrator import Orchestrator
from shared import names
from shared.codec import encode
from shared.messages import Dispatch, RunnerStatus
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from ._script import ScriptFlowRunner

pytestmark = pytest.mark.anyio


def deployment(flow: str, **kw: object) -> RunnerDeployment:
    return RunnerDeployment(name="d", flow_name=flow, entrypoint="x.py:f", path=".", **kw)  # type: ignore[arg-type]


def runner(settings: Settings, **kw: object) -> Runner:
    kw.setdefault("flow_runner", ScriptFlowRunner())
    kw.setdefault("kill_grace", 2.0)
    kw.setdefault("drain_seconds", 0.0)  # a stop kills at once (the drain: test_seeds_runner)
    return Runner(settings=settings, query_seconds=1.0, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def running(*runners: Runner) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for r in runners:
            tg.start_soon(r.astart)
        yield
        for r in runners:
            await r.astop()


async def until_running(client: Client, run_id: str) -> None:
    async with contextlib.aclosing(client.watch_flow_run(run_id)) as changes:
        async for seen in changes:
            if seen.state.type is StateType.RUNNING:
                return


async def finished(client: Client, runs: list[FlowRun]) -> list[FlowRun]:
    return [await client.wait_for_flow_run(r.id) for r in runs]


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


async def test_two_runners_share_work_within_their_limits(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    small, big = (
        runner(settings, name=f"small-{unique}", limit=2),
        runner(settings, name=f"big-{unique}", limit=3),
    )
    for r in (small, big):
        await r.aadd_deployment(deployment(f"f{unique}"))
    async with running(small, big):
        runs = [
            await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 0.2})
            for _ in range(60)
        ]
        done = await finished(client, runs)
    assert {r.state.type for r in done} == {StateType.COMPLETED}
    assert all(r.attempt == 1 and r.run_count == 1 for r in done)  # each ran once
    spans = {
        name: [(r.start_time, r.end_time) for r in done if r.runner == name]
        for name in (small.name, big.name)
    }
    seen = {name: max_overlap(s) for name, s in spans.items()}  # type: ignore[arg-type]
    together = max_overlap([s for v in spans.values() for s in v])  # type: ignore[misc]
    print(f"max concurrent runs seen: {seen}, together {together}")
    assert seen[small.name] <= 2
    assert seen[big.name] <= 3
    assert together <= 5
    assert all(spans.values())  # both took work


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"exit": 3}, explain_exit(3)),
        ({"exit": 0}, explain_exit(0)),
        ({"kill_self": True}, explain_exit(-signal.SIGKILL)),
    ],
)
async def test_an_unreported_exit_is_crashed_with_an_explanation(
    orchestrator: Orchestrator,
    client: Client,
    settings: Settings,
    unique: str,
    params: dict[str, object],
    expected: str,
) -> None:
    r = runner(settings, name=f"r-{unique}")
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with running(r):
        run = await client.create_flow_run(f"f{unique}/d", parameters=params)
        final = await client.wait_for_flow_run(run.id)
    assert final.state.type is StateType.CRASHED
    assert final.state.message == expected


async def test_a_start_failure_crashes_the_run(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    broken = SubprocessFlowRunner(virtualenv="/nonexistent/venv")
    r = runner(settings, name=f"r-{unique}", flow_runner=broken)
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with running(r):
        run = await client.create_flow_run(f"f{unique}/d")
        final = await client.wait_for_flow_run(run.id)
    assert final.state.type is StateType.CRASHED
    assert (final.state.message or "").startswith("The flow run could not be started")


async def test_a_dispatch_delivered_twice_runs_once(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    queue = f"q{unique}"
    a, b = (
        runner(settings, name=f"a-{unique}"),
        runner(settings, name=f"b-{unique}", queue=queue),
    )
    dep_id = await a.aadd_deployment(deployment(f"f{unique}", queue=queue))
    async with running(a, b):
        run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 0.3})
        # the same item again, as a redelivery or a second publisher would send it
        item = Dispatch(
            flow_run_id=run.id,
            deployment_id=dep_id,
            queue=queue,
            attempt=0,
            scheduled_time=run.expected_start_time,
        )
        await client.nc.jetstream().publish(names.dispatch_subject(queue, dep_id), encode(item))
        final = await client.wait_for_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED
    assert final.attempt == 1
    assert final.run_count == 1


async def test_run_once_runs_what_is_waiting_and_returns(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"r-{unique}", limit=4)
    await r.aadd_deployment(deployment(f"f{unique}"))
    runs = [await client.create_flow_run(f"f{unique}/d") for _ in range(3)]
    await r.astart(run_once=True)
    for run in runs:
        assert (await client.read_flow_run(run.id)).state.type is StateType.COMPLETED


async def test_execute_flow_run(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"r-{unique}")
    await r.aadd_deployment(deployment(f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/d", parameters={"result": 42})
    final = await r.aexecute_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED
    assert final.state.data == 42


async def test_stop_before_start_and_bad_names(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await Runner(settings=settings).astop()
    for bad in ("a/b", "50%"):
        with pytest.raises(ValueError, match="cannot contain"):
            Runner(name=bad, settings=settings)


async def test_shutdown_pauses_and_leaves_no_process(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"r-{unique}", pause_on_shutdown=True)
    await r.aadd_deployment(deployment(f"f{unique}"))
    async with running(r):
        run = await client.create_flow_run(
            f"f{unique}/d", parameters={"sleep": 60, "ignore_term": True}
        )
        await until_running(client, run.id)
    final = await client.read_flow_run(run.id)
    assert final.state.type is StateType.CRASHED
    assert f"runner {r.name} shut down" in (final.state.message or "")
    assert (await client.read_deployment(f"f{unique}/d")).paused
    assert r.in_progress == 0


async def test_a_deployment_limit_holds_across_runners(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    a, b = (
        runner(settings, name=f"a-{unique}", limit=3),
        runner(settings, name=f"b-{unique}", limit=3),
    )
    for r in (a, b):
        await r.aadd_deployment(deployment(f"f{unique}", concurrency_limit=1))
    async with running(a, b):
        runs = [
            await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 0.1})
            for _ in range(6)
        ]
        done = await finished(client, runs)
    assert {r.state.type for r in done} == {StateType.COMPLETED}
    spans = [(r.start_time, r.end_time) for r in done]
    assert max_overlap(spans) == 1  # type: ignore[arg-type]
    slots = await client.nc.jetstream().key_value(names.SLOTS_BUCKET)
    left = []
    with contextlib.suppress(Exception):
        left = await slots.keys()
    assert not [k for k in left if k.startswith(done[0].deployment_id or "?")]


async def test_runners_heartbeat(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    r = runner(settings, name=f"r-{unique}", heartbeat_seconds=0.2)
    await r.aadd_deployment(deployment(f"f{unique}"))
    beats = await client.nc.jetstream().key_value(names.HEARTBEATS_BUCKET)
    async with running(r):
        run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 1.0})
        await until_running(client, run.id)
        watcher = await beats.watch(r.name)
        try:
            while True:
                entry = await watcher.updates(timeout=10)
                if entry is None or not entry.value:
                    continue
                status = msgspec.json.decode(entry.value, type=RunnerStatus)
                if [h.id for h in status.runs] == [run.id]:
                    break
        finally:
            await watcher.stop()
        await client.wait_for_flow_run(run.id)
    assert status.runner == r.name
    assert status.limit == r.limit


async def test_a_runner_serving_a_queue_and_a_deployment_starts_each_run_once(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    """Both of its consumers see every item of that deployment; one process per run."""
    script = ScriptFlowRunner()
    queue = f"q{unique}"  # our own queue: leftovers of other tests stay out
    r = runner(settings, name=f"r-{unique}", queue=queue, flow_runner=script, limit=4)
    await r.aadd_deployment(deployment(f"f{unique}", queue=queue))
    async with running(r):
        runs = [
            await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 0.2})
            for _ in range(4)
        ]
        done = await finished(client, runs)
    assert {d.state.type for d in done} == {StateType.COMPLETED}
    assert sorted(script.started) == sorted(run.id for run in runs)


async def _orchestrator_until(
    settings: Settings,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with Orchestrator(settings, grace=1.0):
        task_status.started()
        await stop.wait()


async def test_a_run_that_ends_while_the_orchestrator_is_away_is_still_settled(
    settings: Settings, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner holds a run until it has reported it: when the run's process
    ends while no orchestrator answers (a restart, a NATS outage), the runner
    keeps trying, and the run ends Crashed once the orchestrator is back —
    instead of staying Running for ever under a runner that is alive."""
    r = runner(settings, name=f"r-{unique}")
    away, back = anyio.Event(), anyio.Event()
    async with Client(settings) as client, anyio.create_task_group() as tg:
        gone = anyio.Event()

        async def first_orchestrator(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            await _orchestrator_until(settings, away, task_status=task_status)
            gone.set()

        await tg.start(first_orchestrator)
        await r.aadd_deployment(deployment(f"f{unique}"))
        async with running(r):
            run = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 600})
            await until_running(client, run.id)
            process = r._active[run.id].process
            away.set()
            await gone.wait()  # the orchestrator is gone
            await process.kill(30)  # SIGTERM: the run's process ends without a report
            with anyio.fail_after(60):  # the runner tried, and nobody answered
                while "cannot report run" not in caplog.text:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            await tg.start(_orchestrator_until, settings, back)
            final = await client.wait_for_flow_run(run.id)
            back.set()
    assert final.state.type is StateType.CRASHED
    assert final.state.message == explain_exit(-signal.SIGTERM)


async def test_the_offer_of_a_deleted_run_is_dropped_not_retried(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    """A run deleted after it was offered: the runner settles the item, then runs the next."""
    queue = f"q{unique}"
    r = runner(settings, name=f"r-{unique}", queue=queue)
    dep_id = await r.aadd_deployment(deployment(f"f{unique}", queue=queue))
    doomed = await client.create_flow_run(
        f"f{unique}/d", scheduled_start_time=datetime.now(UTC) + timedelta(hours=1)
    )
    await client.delete_flow_run(doomed.id)
    js = client.nc.jetstream()
    async with running(r):
        item = Dispatch(
            flow_run_id=doomed.id,
            deployment_id=dep_id,
            queue=queue,
            attempt=0,
            scheduled_time=datetime.now(UTC),
        )
        await js.publish(names.dispatch_subject(queue, dep_id), encode(item))
        run = await client.create_flow_run(f"f{unique}/d")
        final = await client.wait_for_flow_run(run.id)
        assert final.state.type is StateType.COMPLETED

        async def settled() -> bool:
            for info in await js.consumers_info(names.DISPATCH_STREAM):
                filters = [info.config.filter_subject, *(info.config.filter_subjects or [])]
                if any(f and queue in f for f in filters):
                    return info.num_ack_pending == 0 and info.num_pending == 0
            return False

        with anyio.fail_after(60):
            while True:  # the server's consumer state: asked again, not waited for
                if await settled():
                    break
                await anyio.sleep(0.2)


async def test_a_claim_that_meets_no_orchestrator_is_a_sluice_error_not_a_crash(
    settings: Settings, unique: str
) -> None:
    """Right after a nats-server restart a runner can pull an item before any
    orchestrator is subscribed again: its claim's StackUnavailable must reach
    _take's handler as itself (the item is put back), not wrapped in the group
    that keeps the item in progress, which stopped the runner (bench.recovery)."""
    from datetime import UTC

    from shared.errors import StackUnavailable

    r = runner(settings, name=f"claim-{unique}", queue=f"q{unique}")

    async def no_orchestrator(*_: object) -> None:
        raise StackUnavailable("no service answers 'flowrun.state.propose'")

    r._claim = no_orchestrator  # type: ignore[method-assign]
    item = Dispatch(
        flow_run_id="00000000-0000-4000-8000-000000000001",
        deployment_id=None,
        queue=f"q{unique}",
        attempt=0,
        scheduled_time=datetime.now(UTC),
    )
    with pytest.raises(StackUnavailable):
        await r._claim_keeping(None, item, None)  # type: ignore[arg-type]
