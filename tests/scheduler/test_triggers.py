"""Deployment triggers: a run reaching a state starts a run of another deployment."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
import pytest

from services.dev import NatsServer
from services.scheduler._follow import RunFeed
from services.scheduler._triggers import fired, matches
from shared import runlog
from shared.models import Deployment, FlowRun, FlowRunTrigger, PastState
from shared.states import State, StateType

from ..faults._proxy import BlackHoleProxy
from ..faults._stack import retry
from .conftest import Stack

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def run_of(deployment: str, state: StateType, name: str | None = None) -> FlowRun:
    return FlowRun(
        id="00000000-0000-4000-8000-000000000001",
        name="r",
        flow_name=deployment.split("/")[0],
        deployment_id="src",
        deployment_name=deployment,
        state=State(type=state, name=name or state.value.title(), timestamp=NOW),
        created=NOW,
        updated=NOW,
        expected_start_time=NOW,
    )


def test_matching() -> None:
    on_done = FlowRunTrigger(deployment="etl/nightly")
    assert matches(on_done, run_of("etl/nightly", StateType.COMPLETED))
    assert matches(on_done, run_of("etl/nightly", StateType.COMPLETED, "Cached"))
    assert not matches(on_done, run_of("etl/nightly", StateType.FAILED))
    assert not matches(on_done, run_of("etl/hourly", StateType.COMPLETED))
    by_flow = FlowRunTrigger(flow_name="etl", states=["failed", "Crashed"])
    assert matches(by_flow, run_of("etl/hourly", StateType.FAILED))
    assert matches(by_flow, run_of("etl/nightly", StateType.CRASHED))
    assert not matches(
        FlowRunTrigger(deployment="etl/nightly", enabled=False),
        run_of("etl/nightly", StateType.COMPLETED),
    )
    assert not matches(FlowRunTrigger(), run_of("etl/nightly", StateType.COMPLETED))


def test_a_deployment_never_triggers_itself_and_paused_ones_do_not_fire() -> None:
    def deployment(id_: str, paused: bool = False) -> Deployment:
        return Deployment(
            id=id_,
            name="d",
            flow_name="etl",
            created=NOW,
            updated=NOW,
            paused=paused,
            triggers=[FlowRunTrigger(flow_name="etl")],
        )

    run = run_of("etl/d", StateType.COMPLETED)
    fires = fired([deployment("src"), deployment("other"), deployment("off", True)], run)
    assert [(d.id, i) for d, i in fires] == [("other", 0)]


@pytest.mark.anyio
async def test_a_completed_run_triggers_another_deployment_once(stack: Stack) -> None:
    await stack.start_scheduler()
    await stack.deploy("source")
    await stack.deploy(
        "target",
        triggers=[FlowRunTrigger(deployment="flow/source", parameters={"x": 1})],
    )
    run = await stack.client.create_flow_run("flow/source")
    attempt = await stack.claim(run.id)
    await stack.settle()
    assert await stack.runs("flow/target") == []  # Running does not fire it
    await stack.finish(run.id, attempt)
    await stack.settle()
    await stack.start_scheduler()  # a second scheduler at once: still one run
    await stack.settle()
    triggered = await stack.runs("flow/target")
    assert len(triggered) == 1
    assert triggered[0].parameters == {"x": 1}
    assert "triggered" in triggered[0].tags


@pytest.mark.anyio
# nats-py does not close the transport of a reconnect attempt that timed out
# waiting for the server's INFO (what the black hole makes): its writer is
# collected unclosed, in this process, since the scheduler runs in the test's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_run_that_ends_while_the_scheduler_is_cut_off_still_triggers(
    stack: Stack, sched_server: NatsServer
) -> None:
    """The scheduler's link to NATS is down while nats-server restarts (so the
    stream consumer it had is gone) and the source run completes. Once back,
    it goes on from the first write it had not applied: the trigger fires,
    though no listing of Scheduled and active runs holds the run any more."""
    async with BlackHoleProxy("127.0.0.1", sched_server.port) as proxy:
        scheduler = await stack.start_scheduler(nats_url=proxy.url)
        await stack.deploy("source")
        await stack.deploy("target", triggers=[FlowRunTrigger(deployment="flow/source")])
        run = await stack.client.create_flow_run("flow/source")
        attempt = await stack.claim(run.id)
        await stack.settle()
        proxy.blackhole()
        proxy.cut()  # the scheduler's connection drops; its reconnects go nowhere
        sched_server.stop()
        sched_server.start()  # same port, same data; the orchestrator reconnects
        await retry(lambda: stack.finish(run.id, attempt))
        rebuilds = scheduler.runs.rebuilds
        proxy.heal()
        with anyio.fail_after(60):  # the feed resubscribes and rebuilds after the reconnect
            while scheduler.runs.rebuilds == rebuilds:
                with contextlib.suppress(Exception):  # not calm until it has
                    await scheduler.settle(timeout=1)
        await retry(stack.settle)
        triggered = await stack.runs("flow/target")
        assert len(triggered) == 1, triggered
        await stack.stop_scheduler(scheduler)


def test_to_deployment_carries_triggers() -> None:
    from engine import flow

    @flow(name="reporter")
    def reporter() -> None: ...

    trigger = FlowRunTrigger(deployment="etl/nightly", states=["COMPLETED"])
    request = reporter.to_deployment("after-etl", triggers=[trigger]).to_request()
    assert request.triggers == [trigger]


@pytest.mark.anyio
async def test_states_a_run_left_before_its_write_arrived_are_still_handed_to_triggers() -> None:
    """The stream keeps a run's newest write only: a run that went Running and
    Completed before the scheduler read it is handed on as each, once."""
    handed: list[tuple[StateType, datetime]] = []

    async def on_event(run: FlowRun) -> None:
        handed.append((run.state.type, run.state.timestamp))

    feed = RunFeed(client=None, dispatcher=None, on_event=on_event)  # type: ignore[arg-type]
    states = [
        State(type=t, name=t.value.title(), timestamp=NOW + timedelta(seconds=i))
        for i, t in enumerate([StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING])
    ]
    run = msgspec.structs.replace(
        run_of("etl/nightly", StateType.COMPLETED),
        history=[PastState(state=s, revision=i + 1) for i, s in enumerate(states)],
    )
    # Subscribed after revision 1 (the listing covered the run as Scheduled).
    await feed._hand_on(runlog.event_for(run, 4), since=1)
    assert [t for t, _ in handed] == [StateType.PENDING, StateType.RUNNING, StateType.COMPLETED]
    handed.clear()
    retried = msgspec.structs.replace(
        run,
        state=State(type=StateType.SCHEDULED, name="AwaitingRetry", timestamp=NOW),
        history=[*run.history, PastState(state=run.state, revision=4)],
    )
    await feed._hand_on(runlog.event_for(retried, 5), since=1)
    assert [t for t, _ in handed] == [StateType.SCHEDULED]  # only what it had not handed on
