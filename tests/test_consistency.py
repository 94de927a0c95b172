"""Races and repeats: compare-and-set claims, idempotency under concurrency, transition ids."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import nats
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from services.orchestrator import Orchestrator
from services.orchestrator._deployments import Deployments
from services.orchestrator._keys import Keys
from services.orchestrator._publish import Publisher
from services.orchestrator._runs import Runs
from services.orchestrator._slots import Slots
from services.orchestrator._store import DeploymentStore, IdempotencyStore, RunStore
from shared import names
from shared.clock import SystemClock
from shared.messages import (
    Decision,
    FlowRunRef,
    Heartbeat,
    HeldRun,
    ProposedState,
    ProposeState,
    RegisterDeployment,
)
from shared.models import Deployment, FlowRun
from shared.settings import Settings
from shared.states import StateType

pytestmark = pytest.mark.anyio


@pytest.fixture
async def two_replicas(settings: Settings, tmp_path: Path) -> AsyncIterator[None]:
    """Two orchestrators in one queue group, as `docker compose up --scale` gives."""
    second = Settings(nats_url=settings.nats_url, home=tmp_path / "replica-2")
    async with Orchestrator(settings, grace=1), Orchestrator(second, grace=1):
        yield


async def test_racing_claims_exactly_one_wins(
    two_replicas: None, settings: Settings, unique: str
) -> None:
    async with Client(settings) as admin:
        await admin.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
        runs = [await admin.create_flow_run(f"f{unique}/d") for _ in range(5)]

    clients = [Client(settings) for _ in range(8)]
    for c in clients:
        await c.__aenter__()
    try:
        for run in runs:
            outcomes: list[Decision] = []

            async def claim(
                c: Client, i: int, run_id: str = run.id, out: list[Decision] = outcomes
            ) -> None:
                reply = await c.propose_state(
                    run_id, ProposedState(type=StateType.PENDING), runner=f"runner-{i}", attempt=0
                )
                out.append(reply.status)

            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(claim, clients[i % len(clients)], i)
            counts = Counter(outcomes)
            assert counts[Decision.ACCEPT] == 1, counts
            assert counts[Decision.ABORT] == 39, counts
            final = await clients[0].read_flow_run(run.id)
            assert final.state.type is StateType.PENDING
            assert final.attempt == 1
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)


async def test_concurrent_creates_with_one_key_make_one_run(
    two_replicas: None, settings: Settings, unique: str
) -> None:
    async with Client(settings) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
        ids: list[str] = []

        async def create() -> None:
            run = await c.create_flow_run(f"f{unique}/d", idempotency_key="same")
            ids.append(run.id)

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(create)
        assert len(set(ids)) == 1
        page = await c.list_flow_runs(flow_name=f"f{unique}")
        assert [r.id for r in page.flow_runs] == [ids[0]]


async def test_a_repeated_transition_is_harmless(client: Client, unique: str) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/d")
    first = await client.propose_state(
        run.id, ProposedState(type=StateType.RUNNING), transition_id="tx-1"
    )
    done = await client.propose_state(
        run.id, ProposedState(type=StateType.COMPLETED), transition_id="tx-2"
    )
    # the network lost the replies; the proposer sends both again
    again = await client.propose_state(
        run.id, ProposedState(type=StateType.RUNNING), transition_id="tx-1"
    )
    again_done = await client.propose_state(
        run.id, ProposedState(type=StateType.COMPLETED), transition_id="tx-2"
    )
    assert first.status is done.status is Decision.ACCEPT
    assert again.status is again_done.status is Decision.ACCEPT
    assert again.revision == again_done.revision == done.revision  # nothing was written
    final = await client.read_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED
    assert final.run_count == 1


async def test_running_too_early_waits(client: Client, unique: str) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    later = datetime.now(UTC) + timedelta(hours=1)
    run = await client.create_flow_run(f"f{unique}/d", scheduled_start_time=later)
    reply = await client.propose_state(run.id, ProposedState(type=StateType.RUNNING))
    assert reply.status is Decision.WAIT
    assert reply.delay_seconds is not None and 3500 < reply.delay_seconds <= 3600
    assert reply.state.type is StateType.SCHEDULED


async def test_a_stale_owner_cannot_report(client: Client, unique: str) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/d")
    claim = await client.propose_state(
        run.id, ProposedState(type=StateType.PENDING), runner="old", attempt=0
    )
    await client.propose_state(run.id, ProposedState(type=StateType.RUNNING), attempt=claim.attempt)
    await client.propose_state(
        run.id, ProposedState(type=StateType.CRASHED), attempt=claim.attempt
    )  # as the watcher settles a lost runner's run
    await client.propose_state(run.id, ProposedState(type=StateType.SCHEDULED), retry=True)
    new = await client.propose_state(
        run.id, ProposedState(type=StateType.PENDING), runner="new", attempt=claim.attempt
    )
    assert new.status is Decision.ACCEPT
    late = await client.propose_state(
        run.id, ProposedState(type=StateType.COMPLETED), attempt=claim.attempt
    )
    assert late.status is Decision.ABORT
    assert "stale" in (late.reason or "")
    assert (await client.read_flow_run(run.id)).runner == "new"


async def test_watch_sees_every_change(client: Client, unique: str) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/d")
    seen: list[StateType] = []

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with contextlib.aclosing(client.watch_flow_run(run.id)) as runs:
            async for current in runs:
                seen.append(current.state.type)
                if len(seen) == 1:
                    task_status.started()
                if current.state.is_terminal:
                    return

    async with anyio.create_task_group() as tg:
        await tg.start(watch)
        for t in (StateType.PENDING, StateType.RUNNING, StateType.COMPLETED):
            await client.propose_state(run.id, ProposedState(type=t))
    # every transition, in order: the watch follows the run's event stream
    assert seen == [
        StateType.SCHEDULED,
        StateType.PENDING,
        StateType.RUNNING,
        StateType.COMPLETED,
    ]
    final = await client.wait_for_flow_run(run.id)
    assert final.state.type is StateType.COMPLETED


async def test_logs_read_every_stored_record_every_time(client: Client, unique: str) -> None:
    from shared import names
    from shared.codec import encode
    from shared.messages import LogRecord

    run_id = f"00000000-0000-4000-8000-{unique:0>12}"
    js = client.nc.jetstream()
    for i in range(3):
        record = LogRecord(
            flow_run_id=run_id, timestamp=datetime.now(UTC), level=20, message=f"line {i}"
        )
        await js.publish(names.logs_subject(run_id), encode(record))
    for _ in range(5):
        assert [r.message async for r in client.logs(run_id)] == ["line 0", "line 1", "line 2"]
    assert [r async for r in client.logs(f"00000000-0000-4000-8000-{'f' * 12}")] == []


async def test_cancelling_a_parent_cancels_its_descendants(client: Client, unique: str) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    parent = await client.create_flow_run(f"f{unique}/d")
    child = await client.create_flow_run(f"f{unique}/d", parent_flow_run_id=parent.id)
    grandchild = await client.create_flow_run(flow_name=f"sub{unique}", parent_flow_run_id=child.id)
    done = await client.create_flow_run(f"f{unique}/d", parent_flow_run_id=parent.id)
    for t in (StateType.RUNNING, StateType.COMPLETED):
        await client.propose_state(done.id, ProposedState(type=t))
    await client.propose_state(child.id, ProposedState(type=StateType.RUNNING))

    await client.cancel_flow_run(parent.id)
    assert (await client.read_flow_run(parent.id)).state.type is StateType.CANCELLED
    assert (await client.read_flow_run(child.id)).state.type is StateType.CANCELLING
    assert (await client.read_flow_run(grandchild.id)).state.type is StateType.CANCELLED
    assert (await client.read_flow_run(done.id)).state.type is StateType.COMPLETED  # finished

    keep = await client.create_flow_run(f"f{unique}/d")
    kept_child = await client.create_flow_run(f"f{unique}/d", parent_flow_run_id=keep.id)
    await client.cancel_flow_run(keep.id, cascade=False)
    assert (await client.read_flow_run(kept_child.id)).state.type is StateType.SCHEDULED


async def _runs_handler(nc: NATS) -> Runs:
    """The orchestrator's flow-run handlers on ``nc``, as one replica holds them."""
    js = nc.jetstream()
    clock = SystemClock()
    deployments = Deployments(
        DeploymentStore(await js.key_value(names.DEPLOYMENTS_BUCKET), js), clock
    )
    runs = RunStore(await js.key_value(names.FLOW_RUNS_BUCKET), nc)
    claims = IdempotencyStore(await js.key_value(names.IDEMPOTENCY_BUCKET))
    return Runs(
        runs,
        Keys(runs, claims, legacy=False),
        deployments,
        Publisher(js),
        clock,
        Slots(js),
    )


@contextlib.asynccontextmanager
async def _two_replicas_limit_one(
    nc: NATS, settings: Settings, unique: str
) -> AsyncIterator[tuple[Deployment, FlowRun, FlowRun, Runs, Runs]]:
    """A deployment with a concurrency limit of 1, two of its runs, and the
    handlers of two replicas (one on ``nc``, one on a connection of its own)."""
    async with Client(settings) as admin:
        deployment = await admin.register_deployment(
            RegisterDeployment(name="d", flow_name=f"f{unique}", concurrency_limit=1)
        )
        first = await admin.create_flow_run(f"f{unique}/d")
        second = await admin.create_flow_run(f"f{unique}/d")
    other = await nats.connect(settings.nats_url)
    try:
        yield deployment, first, second, await _runs_handler(nc), await _runs_handler(other)
    finally:
        await other.close()


async def test_a_replica_never_answers_from_an_outdated_copy(
    orchestrator: Orchestrator, nc: NATS, settings: Settings, unique: str
) -> None:
    """A replica judges a proposal first on the copy of the run it last wrote,
    to save a read; another replica may have moved the run since. Whatever
    that copy says, the answer is the one the stored run gives."""
    async with Client(settings) as admin:
        await admin.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
        created = await admin.create_flow_run(f"f{unique}/d")
    other = await nats.connect(settings.nats_url)
    try:
        a, b = await _runs_handler(nc), await _runs_handler(other)
        pending = ProposedState(type=StateType.PENDING)
        # a remembers the run Scheduled; b claims it: a's copy would refuse attempt 1
        assert (await a.read(FlowRunRef(id=created.id))).state.type is StateType.SCHEDULED
        await a.propose(ProposeState(id=created.id, state=ProposedState(type=StateType.SCHEDULED)))
        claim = await b.propose(ProposeState(id=created.id, state=pending, runner="r", attempt=0))
        assert claim.status is Decision.ACCEPT and claim.attempt == 1
        running = ProposedState(type=StateType.RUNNING)
        reply = await a.propose(ProposeState(id=created.id, state=running, attempt=1))
        assert reply.status is Decision.ACCEPT, reply.reason
        # now a remembers it Running; b cancels it: a's copy would accept Completed
        stop = ProposedState(type=StateType.CANCELLING)
        assert (await b.propose(ProposeState(id=created.id, state=stop))).status is Decision.ACCEPT
        done = ProposedState(type=StateType.COMPLETED)
        reply = await a.propose(ProposeState(id=created.id, state=done, attempt=1))
        assert reply.status is not Decision.ACCEPT
        assert reply.state.type is StateType.CANCELLING
        stored = await a.read(FlowRunRef(id=created.id))
        assert stored.state.type is StateType.CANCELLING
    finally:
        await other.close()


async def test_a_proposal_judged_on_an_outdated_copy_leaves_the_claims_slot(
    orchestrator: Orchestrator, nc: NATS, settings: Settings, unique: str
) -> None:
    """Found by the fuzz suite: a proposal judged on a copy of the run from
    before its claim takes a slot (Scheduled -> Running takes one), finds the
    claim's slot already held by the run and renews it, then loses the
    compare-and-set on the run. Giving "its" slot back then freed the claim's:
    a third run started with two Running and a limit of two."""
    async with _two_replicas_limit_one(nc, settings, unique) as (deployment, first, second, a, b):
        assert (await a.read(FlowRunRef(id=first.id))).state.type is StateType.SCHEDULED
        await a.propose(ProposeState(id=first.id, state=ProposedState(type=StateType.SCHEDULED)))
        pending = ProposedState(type=StateType.PENDING)
        claim = await b.propose(ProposeState(id=first.id, state=pending, runner="r", attempt=0))
        assert claim.status is Decision.ACCEPT and claim.lease_seconds
        # a still remembers the run Scheduled: Running without a claim would take a slot
        running = ProposedState(type=StateType.RUNNING)
        reply = await a.propose(ProposeState(id=first.id, state=running))
        assert reply.status is Decision.ABORT, reply.reason  # judged on the stored claim
        held = await Slots(nc.jetstream()).holders(deployment.id, 1)
        assert [lease.flow_run_id for lease in held] == [first.id]
        late = await b.propose(ProposeState(id=second.id, state=pending, runner="r", attempt=0))
        assert late.status is Decision.WAIT, late.reason


async def test_a_heartbeat_does_not_take_a_slot_for_a_run_that_just_ended(
    orchestrator: Orchestrator, nc: NATS, settings: Settings, unique: str
) -> None:
    """A heartbeat reads the run Running; before it renews the slot, the run
    completes and its slot is freed. The renewal then found the slot free and
    took it again, for a run that had ended: the deployment ran one short
    until the lease ran out."""
    async with _two_replicas_limit_one(nc, settings, unique) as (deployment, first, second, a, b):
        pending = ProposedState(type=StateType.PENDING)
        claim = await b.propose(ProposeState(id=first.id, state=pending, runner="r", attempt=0))
        assert claim.status is Decision.ACCEPT
        running = ProposedState(type=StateType.RUNNING)
        await b.propose(ProposeState(id=first.id, state=running, attempt=claim.attempt))
        store, read = a._runs, a._runs.get
        ended = False

        async def read_then_end(run_id: str) -> object:
            nonlocal ended
            found = await read(run_id)  # Running, as the heartbeat sees it
            if not ended:
                ended = True
                completed = ProposedState(type=StateType.COMPLETED)
                done = await b.propose(
                    ProposeState(id=first.id, state=completed, attempt=claim.attempt)
                )
                assert done.status is Decision.ACCEPT
            return found

        store.get = read_then_end  # type: ignore[method-assign]
        held = HeldRun(id=first.id, attempt=claim.attempt)
        await a.heartbeat(Heartbeat(runner="r", interval=5.0, runs=[held]))
        assert ended
        assert await Slots(nc.jetstream()).holders(deployment.id, 1) == []
        late = await b.propose(ProposeState(id=second.id, state=pending, runner="r", attempt=0))
        assert late.status is Decision.ACCEPT, late.reason


async def test_a_cancel_reply_carries_the_state_stored_when_it_is_sent(
    client: Client, unique: str
) -> None:
    """The runner of a cancelled run can report Cancelled while the orchestrator
    still cancels the run's children: the reply then says Cancelled, not the
    Cancelling it wrote first (issue 18, finding 8)."""
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    parent = await client.create_flow_run(f"f{unique}/d")
    claim = await client.propose_state(
        parent.id, ProposedState(type=StateType.PENDING), runner="r", attempt=0
    )
    await client.propose_state(
        parent.id, ProposedState(type=StateType.RUNNING), attempt=claim.attempt
    )
    children = [
        await client.create_flow_run(flow_name=f"sub{unique}", parent_flow_run_id=parent.id)
        for _ in range(40)  # a cascade that takes a while
    ]
    order: list[str] = []

    async def runner_reports_cancelled() -> None:
        # Once the cascade has begun (the parent is Cancelling, a child is
        # Cancelled), the runner says its process is gone.
        with anyio.fail_after(60):
            while (await client.read_flow_run(children[0].id)).state.type is not (
                StateType.CANCELLED
            ):
                await anyio.lowlevel.checkpoint()
        reply = await client.propose_state(
            parent.id, ProposedState(type=StateType.CANCELLED), attempt=claim.attempt
        )
        assert reply.status is Decision.ACCEPT
        order.append("runner")

    async with anyio.create_task_group() as tg:
        tg.start_soon(runner_reports_cancelled)
        replied = await client.cancel_flow_run(parent.id)
        order.append("reply")
    stored = await client.read_flow_run(parent.id)
    assert stored.state.type is StateType.CANCELLED
    if order[0] == "runner":  # Cancelled was stored before the reply came
        assert replied.state.type is StateType.CANCELLED, replied.state
    else:
        assert replied.state.type in (StateType.CANCELLING, StateType.CANCELLED)
