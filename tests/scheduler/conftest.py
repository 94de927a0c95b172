"""A private stack per scheduler test: its own nats-server, an orchestrator and
schedulers sharing one FakeClock, so schedule times pass without sleeping.

A server per test (not the session's) because a scheduler acts on every
deployment and run it sees: runs left by other tests would be offered, marked
Late or removed by it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from engine.client import Client
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from services.scheduler import Scheduler
from shared import names
from shared.clock import FakeClock
from shared.codec import decode
from shared.messages import Dispatch, ProposedState, RegisterDeployment
from shared.models import Deployment, DeploymentSchedule, FlowRun, Schedule
from shared.settings import Settings
from shared.states import StateType

START = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def sched_server(own_server: NatsServer) -> NatsServer:
    """The scheduler tests' server: one of the test's own (``tests/conftest.py``)."""
    return own_server


@dataclass
class Stack:
    settings: Settings
    clock: FakeClock
    client: Client
    exits: AsyncExitStack
    schedulers: list[Scheduler] = field(default_factory=list)
    queue: str = "q"

    async def start_scheduler(self, **overrides: Any) -> Scheduler:
        settings = msgspec.structs.replace(self.settings, **overrides)
        scheduler = Scheduler(settings, clock=self.clock, grace=1.0)
        await scheduler.__aenter__()
        self.schedulers.append(scheduler)
        return scheduler

    async def stop_scheduler(self, scheduler: Scheduler) -> None:
        self.schedulers.remove(scheduler)
        await scheduler.__aexit__(None, None, None)

    async def settle(self) -> None:
        for _ in range(2):  # one scheduler's work can be news to another
            for scheduler in self.schedulers:
                await scheduler.settle()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.settle()

    async def deploy(
        self, name: str, *schedules: Schedule | DeploymentSchedule, **fields: Any
    ) -> Deployment:
        items = [
            s if isinstance(s, DeploymentSchedule) else DeploymentSchedule(schedule=s)
            for s in schedules
        ]
        req = RegisterDeployment(
            name=name, flow_name="flow", queue=self.queue, schedules=items, **fields
        )
        deployment = await self.client.register_deployment(req)
        await self.settle()
        return deployment

    async def runs(self, deployment: str = "", states: list[str] | None = None) -> list[FlowRun]:
        """Every run (of a deployment), oldest expected start first."""
        out: list[FlowRun] = []
        offset: int | None = 0
        while offset is not None:
            page = await self.client.list_flow_runs(
                deployment=deployment or None, states=states or [], limit=1000, offset=offset
            )
            out += page.flow_runs
            offset = page.next_offset
        return sorted(out, key=lambda r: (r.expected_start_time, r.id))

    async def offers(self) -> list[Dispatch]:
        """Every dispatch item stored so far, oldest first."""
        js = self.client.nc.jetstream()
        info = await js.stream_info(names.DISPATCH_STREAM)
        if not info.state.messages:
            return []
        sub = await js.subscribe(
            f"{names.DISPATCH_PREFIX}.>",
            stream=names.DISPATCH_STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        items: list[Dispatch] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=2.0)
                except nats.errors.TimeoutError:
                    break
                items.append(decode(msg.data, Dispatch))
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return items

    async def claim(self, run_id: str, *, run: bool = True) -> int:
        """Act as a runner: take the run (PENDING), and start it (RUNNING)."""
        current = await self.client.read_flow_run(run_id)
        reply = await self.client.propose_state(
            run_id,
            ProposedState(type=StateType.PENDING),
            runner="test-runner",
            attempt=current.attempt,
        )
        assert reply.status.value == "ACCEPT", reply
        if run:
            started = await self.client.propose_state(
                run_id, ProposedState(type=StateType.RUNNING), attempt=reply.attempt
            )
            assert started.status.value == "ACCEPT", started
        return reply.attempt

    async def finish(self, run_id: str, attempt: int) -> None:
        reply = await self.client.propose_state(
            run_id, ProposedState(type=StateType.COMPLETED), attempt=attempt
        )
        assert reply.status.value == "ACCEPT", reply


@pytest.fixture
async def stack(sched_server: NatsServer, tmp_path: Path) -> AsyncIterator[Stack]:
    clock = FakeClock(START)
    settings = Settings(
        nats_url=sched_server.url,
        home=tmp_path / "home",
        schedule_horizon_seconds=600.0,
        schedule_min_runs=3,
        late_after_seconds=15.0,
    )
    async with AsyncExitStack() as exits:
        await exits.enter_async_context(Orchestrator(settings, clock=clock, grace=1.0))
        client = await exits.enter_async_context(Client(settings))
        s = Stack(settings=settings, clock=clock, client=client, exits=exits)
        try:
            yield s
        finally:
            for scheduler in reversed(list(s.schedulers)):
                await s.stop_scheduler(scheduler)
