"""The NATS users of deploy/nats/auth.conf hold no more rights than their role needs.
(The connection settings, token, TLS and .creds, are in test_connection_settings.py.)

The end-to-end runs with auth on are in test_compose.py (the compose stack
uses these users); here a server with the deploy/ configuration and an
orchestrator show what each role may not do. A refused publish gets no reply
in nats-py (only a time-out), so each test also finds the server's record of
the violation, and reads the state back to see it unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from shared import names
from shared.bootstrap import bootstrap
from shared.connection import connect, inbox_prefix, request
from shared.errors import FlowRunNotFound, StackUnavailable
from shared.messages import ProposedState, ProposeReply, ProposeState
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from .local_stack import LocalStack, started

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Seconds a JetStream call waits for a reply that a refused request never gets.
REFUSED_WAIT = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with started(tmp_path_factory.mktemp("secure"), only=["orchestrator"]) as local:
        yield local


@pytest.fixture
async def run(stack: LocalStack, unique: str) -> FlowRun:
    async with Client(stack.settings("client")) as c:
        return await c.create_flow_run(flow_name=f"secure-{unique}", agentless=True)


@pytest.fixture
async def as_runner(stack: LocalStack) -> AsyncIterator[NATS]:
    nc = await connect(stack.settings("runner"), name="test-runner", wait=10)
    yield nc
    await nc.close()


async def refused(
    stack: LocalStack, user: str, subject: str, kind: str = "Publish", *, prefix: bool = False
) -> None:
    """Wait until the server has logged ``user`` being refused ``subject`` (or a
    subject starting with it)."""
    wanted = f'user:{user}" - {kind} Violation - Subject "{subject}' + ("" if prefix else '"')
    with anyio.fail_after(30):
        while True:
            if any(wanted in line for line in stack.violations()):
                return
            await anyio.sleep(0.1)


async def revision(stack: LocalStack, run_id: str) -> tuple[int, bytes]:
    nc = await connect(stack.settings("client"), name="test-reader", wait=10)
    try:
        entry = await (await nc.jetstream().key_value(names.FLOW_RUNS_BUCKET)).get(run_id)
        return entry.revision or 0, entry.value or b""
    finally:
        await nc.close()


async def test_a_runner_cannot_write_a_runs_state_directly(
    stack: LocalStack, run: FlowRun, as_runner: NATS
) -> None:
    before = await revision(stack, run.id)
    js = as_runner.jetstream(timeout=REFUSED_WAIT)
    kv = await js.key_value(names.FLOW_RUNS_BUCKET)
    entry = await kv.get(run.id)  # reading is allowed
    assert entry.value == before[1]
    forged = entry.value.replace(b'"SCHEDULED"', b'"COMPLETED"') if entry.value else b"{}"
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await kv.put(run.id, forged)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await kv.update(run.id, forged, last=before[0])
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await kv.delete(run.id)
    subject = f"$KV.{names.FLOW_RUNS_BUCKET}.{run.id}"
    await refused(stack, "runner", subject)
    # Nor around the bucket: deleting its messages, purging or removing its stream.
    stream = names.kv_stream(names.FLOW_RUNS_BUCKET)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.purge_stream(stream)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.delete_msg(stream, before[0])
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.delete_stream(stream)
    await refused(stack, "runner", f"$JS.API.STREAM.PURGE.{stream}")
    await refused(stack, "runner", f"$JS.API.STREAM.MSG.DELETE.{stream}")
    await refused(stack, "runner", f"$JS.API.STREAM.DELETE.{stream}")
    assert await revision(stack, run.id) == before

    # The way a runner may change a run: propose it to the orchestrator.
    reply = await request(
        as_runner,
        names.FLOWRUN_PROPOSE,
        ProposeState(id=run.id, state=ProposedState(type=StateType.PENDING)),
        ProposeReply,
        timeout=30,
    )
    assert reply.status == "ACCEPT"
    assert (await revision(stack, run.id))[0] > before[0]


async def test_a_runner_cannot_create_streams(stack: LocalStack, as_runner: NATS) -> None:
    js = as_runner.jetstream(timeout=REFUSED_WAIT)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.add_stream(name="ROGUE", subjects=["rogue.>"])
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.create_key_value(bucket="rogue")
    await refused(stack, "runner", "$JS.API.STREAM.CREATE.ROGUE")
    await refused(stack, "runner", "$JS.API.STREAM.CREATE.KV_rogue")


@pytest.mark.parametrize("role", ["scheduler", "watcher", "client", "operator"])
async def test_only_the_orchestrator_writes_the_state_store(
    stack: LocalStack, run: FlowRun, role: str
) -> None:
    before = await revision(stack, run.id)
    nc = await connect(stack.settings(role), name=f"test-{role}", wait=10)
    try:
        kv = await nc.jetstream(timeout=REFUSED_WAIT).key_value(names.FLOW_RUNS_BUCKET)
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await kv.put(run.id, b"{}")
    finally:
        await nc.close()
    await refused(stack, role, f"$KV.{names.FLOW_RUNS_BUCKET}.{run.id}")
    assert await revision(stack, run.id) == before


async def test_a_client_creates_reads_and_cancels_but_does_not_propose(
    stack: LocalStack, run: FlowRun
) -> None:
    async with Client(stack.settings("client", request_timeout=REFUSED_WAIT)) as c:
        assert (await c.read_flow_run(run.id)).id == run.id
        with pytest.raises(StackUnavailable):
            await c.propose_state(run.id, ProposedState(type=StateType.RUNNING))
        await refused(stack, "client", names.FLOWRUN_PROPOSE)
        assert (await c.read_flow_run(run.id)).state.type is StateType.SCHEDULED
    async with Client(stack.settings("client")) as c:
        await c.cancel_flow_run(run.id)
        final = await c.read_flow_run(run.id)
    assert final.state.type in (StateType.CANCELLING, StateType.CANCELLED)


async def test_an_operator_also_retries_and_sets_states_through_the_orchestrator(
    stack: LocalStack, run: FlowRun
) -> None:
    before = await revision(stack, run.id)
    async with Client(stack.settings("operator")) as c:
        reply = await c.propose_state(run.id, ProposedState(type=StateType.CANCELLED))
        assert reply.status == "ACCEPT"
    nc = await connect(stack.settings("operator"), name="test-operator", wait=10)
    try:
        kv = await nc.jetstream(timeout=REFUSED_WAIT).key_value(names.FLOW_RUNS_BUCKET)
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await kv.put(run.id, before[1])
    finally:
        await nc.close()
    await refused(stack, "operator", f"$KV.{names.FLOW_RUNS_BUCKET}.{run.id}")
    async with Client(stack.settings("client")) as c:
        assert (await c.read_flow_run(run.id)).state.type is StateType.CANCELLED


async def test_no_role_reads_another_roles_replies_or_requests(
    stack: LocalStack, as_runner: NATS
) -> None:
    assert inbox_prefix(stack.settings("runner")) == "_INBOX.runner"
    for subject in ("_INBOX.client.>", "_INBOX.>", names.FLOWRUN_CREATE):
        await as_runner.subscribe(subject)
        await refused(stack, "runner", subject, kind="Subscription")


async def test_unknown_users_and_wrong_passwords_are_refused(stack: LocalStack) -> None:
    for settings in (
        Settings(nats_url=stack.url),
        Settings(nats_url=stack.url, nats_user="runner", nats_password="wrong"),
    ):
        with pytest.raises(StackUnavailable, match="refused this connection"):
            await connect(settings, name="test-denied", wait=REFUSED_WAIT)


# --- roles at start-up and in the object stores ----------------------------------------
async def test_a_role_that_may_not_create_streams_waits_for_the_orchestrator(
    tmp_path: Path,
) -> None:
    """Services start in any order: a scheduler first finds no streams, may not
    create them, and waits (instead of crashing) until the orchestrator has."""
    fresh = LocalStack(tmp_path, only=[])
    await anyio.to_thread.run_sync(fresh.start)
    try:
        scheduler = await connect(fresh.settings("scheduler"), name="test-scheduler", wait=10)
        orchestrator = await connect(
            fresh.settings("orchestrator"), name="test-orchestrator", wait=10
        )
        try:
            done = anyio.Event()

            async def scheduler_bootstrap() -> None:
                await bootstrap(scheduler.jetstream(), fresh.settings("scheduler"), poll=0.1)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(scheduler_bootstrap)
                await refused(fresh, "scheduler", f"$JS.API.STREAM.CREATE.{names.LOGS_STREAM}")
                assert not done.is_set()
                await bootstrap(orchestrator.jetstream(), fresh.settings("orchestrator"))
                with anyio.fail_after(60):
                    await done.wait()
        finally:
            await scheduler.close()
            await orchestrator.close()
    finally:
        await anyio.to_thread.run_sync(fresh.stop)


async def test_runners_store_results_that_clients_may_read_but_not_write(
    stack: LocalStack, as_runner: NATS, unique: str
) -> None:
    # Bootstrap made the store; a flow-run process (runner user) writes results
    # larger than one chunk, each under a name of its own (replacing one would
    # purge the stream, which a runner may not: test_permissions.py).
    store = await as_runner.jetstream().object_store(names.RESULTS_BUCKET)
    name = f"result-{unique}"
    data = bytes(range(256)) * 2048
    await store.put(f"{name}-first", data)
    await store.put(name, data[::-1])
    nc = await connect(stack.settings("client"), name="test-client", wait=10)
    try:
        js = nc.jetstream(timeout=REFUSED_WAIT)
        reader = await js.object_store(names.RESULTS_BUCKET)
        assert (await reader.get(name)).data == data[::-1]
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await reader.put(name, b"forged")
    finally:
        await nc.close()
    assert not [line for line in stack.violations() if 'user:runner"' in line and "$O." in line]
    await refused(stack, "client", f"$O.{names.RESULTS_BUCKET}.C.", prefix=True)


async def test_only_operators_and_the_scheduler_delete_runs(
    stack: LocalStack, unique: str, run: FlowRun
) -> None:
    async with Client(stack.settings("client", request_timeout=REFUSED_WAIT)) as c:
        with pytest.raises(StackUnavailable):
            await c.delete_flow_run(run.id)
        await refused(stack, "client", names.FLOWRUN_DELETE)
        assert (await c.read_flow_run(run.id)).id == run.id
    async with Client(stack.settings("operator")) as c:
        assert (await c.delete_flow_run(run.id)).id == run.id
        with pytest.raises(FlowRunNotFound):
            await c.read_flow_run(run.id)
        upcoming = await c.create_flow_run(flow_name=f"secure-{unique}", agentless=True)
    async with Client(stack.settings("scheduler")) as c:
        assert (await c.delete_flow_run(upcoming.id, scheduled_only=True)).id == upcoming.id


async def test_clients_store_bundles_that_runners_may_read_but_not_write(
    stack: LocalStack, as_runner: NATS, tmp_path: Path
) -> None:
    from engine._stack.bundles import BundleCache, upload

    project = tmp_path / "project"
    project.mkdir()
    (project / "flows.py").write_text("x = 1\n")
    nc = await connect(stack.settings("client"), name="test-client", wait=10)
    try:
        bundle = await upload(nc.jetstream(), project)
        # A client may not purge the store (only an operator's gc may).
        with pytest.raises((nats.errors.TimeoutError, TimeoutError, nats.js.errors.Error)):
            await nc.jetstream(timeout=REFUSED_WAIT).purge_stream(f"OBJ_{names.BUNDLES_BUCKET}")
    finally:
        await nc.close()
    await refused(stack, "client", f"$JS.API.STREAM.PURGE.OBJ_{names.BUNDLES_BUCKET}")

    # A runner fetches and unpacks it, and may not write one of its own.
    folder = await BundleCache(tmp_path / "runner-home").fetch(as_runner.jetstream(), bundle)
    assert (folder / "flows.py").read_text() == "x = 1\n"
    store = await as_runner.jetstream(timeout=REFUSED_WAIT).object_store(names.BUNDLES_BUCKET)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await store.put(bundle.digest, b"forged")
    await refused(stack, "runner", f"$O.{names.BUNDLES_BUCKET}.C.", prefix=True)
