"""With deploy/'s NATS security configuration, each role trying what it must not.

The server runs deploy/nats/nats.conf (one user per service); the
orchestrator connects as ``orchestrator``. Then a runner's credentials try
to write KV, manage streams, read other roles' inboxes and report for a run
it does not hold; a client's try to propose states. Every attempt must be
refused by the server or the orchestrator, and nothing may change.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from engine.client import Client
from services.orchestrator import Orchestrator
from shared import names, runlog
from shared.connection import connect
from shared.errors import SluiceError
from shared.messages import Decision, ProposedState, RegisterDeployment
from shared.states import StateType
from tests.local_stack import LocalStack

from ._history import History
from ._stack import verify

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[LocalStack]:
    local = LocalStack(tmp_path)
    await anyio.to_thread.run_sync(local.start_nats)
    try:
        async with Orchestrator(local.settings("orchestrator"), grace=1):
            yield local
    finally:
        await anyio.to_thread.run_sync(local.stop_nats)


@contextlib.asynccontextmanager
async def as_role(local: LocalStack, role: str) -> AsyncIterator[NATS]:
    nc = await connect(local.settings(role), name=f"intruder-{role}")
    try:
        yield nc
    finally:
        await nc.close()


async def refused(attempt: object) -> bool:
    """True if the server said no (an error, or silence where an answer was due)."""
    try:
        await attempt  # type: ignore[misc]
    except (nats.errors.Error, TimeoutError, SluiceError):
        return True
    return False


async def state_of(local: LocalStack, run_id: str) -> tuple[object, int]:
    async with Client(local.settings("client")) as c:
        run, revision = await c._read_with_revision(run_id)
        return run.state, revision


async def test_a_runner_cannot_write_state_or_manage_streams(secured: LocalStack) -> None:
    async with Client(secured.settings("client")) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name="guarded"))
        run = await c.create_flow_run("guarded/d")
    before = await state_of(secured, run.id)
    tries = 0
    async with as_role(secured, "runner") as nc:
        js = nc.jetstream(timeout=1)
        kv = await js.key_value(names.FLOW_RUNS_BUCKET)
        for attempt in [
            kv.put(run.id, b'{"state": "COMPLETED"}'),
            kv.delete(run.id),
            kv.purge(run.id),
            js.publish(f"$KV.{names.FLOW_RUNS_BUCKET}.{run.id}", b"{}"),
            js.purge_stream(names.kv_stream(names.FLOW_RUNS_BUCKET)),
            js.delete_stream(runlog.STREAM),
            js.add_stream(name="EVIL", subjects=["evil.>"]),
            js.update_stream(name=runlog.STREAM, subjects=[runlog.SUBJECTS, "x.>"]),
            js.delete_msg(runlog.STREAM, before[1]),
            js.publish(runlog.subject(run.id), b"{}", headers={"KV-Operation": "DEL"}),  # forged
        ]:
            tries += 1
            assert await refused(attempt), attempt
    assert await state_of(secured, run.id) == before
    async with as_role(secured, "orchestrator") as nc:
        streams = await nc.jetstream().streams_info()
        assert "EVIL" not in {s.config.name for s in streams}
        events = await nc.jetstream().stream_info(runlog.STREAM)
        assert events.state.messages == 1  # the create alone: nothing forged or removed
    assert tries == 10


async def test_no_role_reads_another_roles_inbox(secured: LocalStack) -> None:
    seen: list[str] = []

    async def spy(msg: Msg) -> None:
        seen.append(msg.subject)

    async with as_role(secured, "runner") as nc:
        for subject in ("_INBOX.client.>", "_INBOX.>", ">"):
            with contextlib.suppress(nats.errors.Error):
                await nc.subscribe(subject, cb=spy)
        await nc.flush()
        async with Client(secured.settings("client")) as c:  # replies go to _INBOX.client.…
            await c.register_deployment(RegisterDeployment(name="d", flow_name="quiet"))
            await c.create_flow_run("quiet/d")
            await c.list_flow_runs(limit=5)
        await nc.flush()
    assert seen == []


async def test_a_client_cannot_propose_states(secured: LocalStack) -> None:
    async with Client(secured.settings("client")) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name="guarded2"))
        run = await c.create_flow_run("guarded2/d")
    before = await state_of(secured, run.id)
    settings = secured.settings("client", request_timeout=2.0)
    async with Client(settings) as c:
        assert await refused(c.propose_state(run.id, ProposedState(type=StateType.RUNNING)))
    assert await state_of(secured, run.id) == before


async def test_a_runner_cannot_report_with_a_stale_or_foreign_claim(secured: LocalStack) -> None:
    history = History()
    async with Client(secured.settings("client")) as c:
        dep = await c.register_deployment(RegisterDeployment(name="d", flow_name="owned"))
        run = await c.create_flow_run("owned/d")
    async with Client(secured.settings("runner")) as owner:
        claim = await owner.propose_state(
            run.id, ProposedState(type=StateType.PENDING), runner="owner"
        )
        assert claim.status is Decision.ACCEPT
        before = await state_of(secured, run.id)
        for attempt in (0, claim.attempt + 1):
            reply = await owner.propose_state(
                run.id, ProposedState(type=StateType.COMPLETED), attempt=attempt
            )
            assert reply.status is Decision.ABORT
        second = await owner.propose_state(
            run.id, ProposedState(type=StateType.PENDING), runner="thief"
        )
        assert second.status is Decision.ABORT
    assert await state_of(secured, run.id) == before
    await verify(secured.settings("orchestrator"), history, [dep.id], finished=False, timeout=10)


async def test_a_runner_cannot_report_for_a_run_it_does_not_hold(secured: LocalStack) -> None:
    async with Client(secured.settings("client")) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name="foreign"))
        run = await c.create_flow_run("foreign/d")
    async with Client(secured.settings("runner")) as r:
        await r.propose_state(run.id, ProposedState(type=StateType.PENDING), runner="owner")
        before = await state_of(secured, run.id)
        reply = await r.propose_state(run.id, ProposedState(type=StateType.COMPLETED))
    assert reply.status is not Decision.ACCEPT
    assert await state_of(secured, run.id) == before
