"""Keyed creates: the run id derives from the key, deletes free the key, and
keys claimed the old way (a separate claim per key) keep answering their run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from services.orchestrator._keys import derived_run_id, has_legacy_claims
from services.orchestrator._store import IdempotencyStore
from shared import names
from shared.messages import RegisterDeployment
from shared.settings import Settings

pytestmark = pytest.mark.anyio

LATER = datetime.now(UTC) + timedelta(days=1)  # deletable: Scheduled and not yet due


async def test_a_keyed_run_id_derives_from_the_key_and_is_claimed_nowhere_else(
    client: Client, nc: NATS, unique: str
) -> None:
    for name in ("a", "b"):
        await client.register_deployment(RegisterDeployment(name=name, flow_name=f"f{unique}"))
    run = await client.create_flow_run(f"f{unique}/a", idempotency_key="k")
    assert run.id == derived_run_id(f"f{unique}/a", "k")
    assert (await client.create_flow_run(f"f{unique}/a", idempotency_key="k")).id == run.id
    # keys are per deployment name, or per flow for runs without one
    other = await client.create_flow_run(f"f{unique}/b", idempotency_key="k")
    assert other.id == derived_run_id(f"f{unique}/b", "k")
    bare = await client.create_flow_run(flow_name=f"f{unique}", idempotency_key="k")
    assert bare.id == derived_run_id(f"flow:f{unique}", "k")
    assert len({run.id, other.id, bare.id}) == 3
    claims = await nc.jetstream().key_value(names.IDEMPOTENCY_BUCKET)
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await claims.get(IdempotencyStore.key(f"f{unique}/a", "k"))


async def test_each_delete_frees_the_key_for_one_new_run(client: Client, unique: str) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    target = f"f{unique}/d"
    seen: list[str] = []
    for _ in range(3):
        results: list[str] = []

        async def create(results: list[str] = results) -> None:
            run = await client.create_flow_run(
                target, idempotency_key="slot", scheduled_start_time=LATER
            )
            results.append(run.id)

        async with anyio.create_task_group() as tg:  # racing creates: one run
            for _ in range(5):
                tg.start_soon(create)
        assert len(set(results)) == 1
        assert results[0] not in seen  # a freed key never brings a deleted run back
        seen.append(results[0])
        await client.delete_flow_run(results[0])
    assert seen[0] == derived_run_id(target, "slot")


async def test_a_create_that_died_after_claiming_a_freed_key_is_finished(
    client: Client, nc: NATS, unique: str
) -> None:
    """The run after a deleted one is claimed before it is stored: a request
    that died in between leaves the claim, and the next one stores that run."""
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    target = f"f{unique}/d"
    first = await client.create_flow_run(target, idempotency_key="k", scheduled_start_time=LATER)
    await client.delete_flow_run(first.id)
    orphan = str(uuid.uuid4())
    claims = await nc.jetstream().key_value(names.IDEMPOTENCY_BUCKET)
    await claims.create(IdempotencyStore.reissued_key(target, "k"), orphan.encode())
    second = await client.create_flow_run(target, idempotency_key="k")
    assert second.id == orphan
    assert (await client.read_flow_run(orphan)).idempotency_key == "k"
    # such claims are not taken for claims from before derived ids
    assert not await has_legacy_claims(nc.jetstream())


async def test_keys_claimed_the_old_way_still_answer_their_run(tmp_path: Path) -> None:
    """An upgrade: the bucket holds a claim from an orchestrator that bound keys
    there; a new orchestrator answers that key with that run, not a new one."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        settings = Settings(nats_url=server.url, home=tmp_path / "home", request_timeout=10.0)
        async with Orchestrator(settings, grace=1), Client(settings) as client:
            await client.register_deployment(RegisterDeployment(name="d", flow_name="f"))
            old = await client.create_flow_run("f/d", scheduled_start_time=LATER)
        nc = await nats.connect(server.url)
        try:
            claims = await nc.jetstream().key_value(names.IDEMPOTENCY_BUCKET)
            await claims.create(IdempotencyStore.key("f/d", "old-key"), old.id.encode())
        finally:
            await nc.close()
        async with Orchestrator(settings, grace=1), Client(settings) as client:
            assert (await client.create_flow_run("f/d", idempotency_key="old-key")).id == old.id
            new = await client.create_flow_run(
                "f/d", idempotency_key="new", scheduled_start_time=LATER
            )
            assert new.id != derived_run_id("f/d", "new")  # claimed first, as before
            assert (await client.create_flow_run("f/d", idempotency_key="new")).id == new.id
            await client.delete_flow_run(new.id)
            again = await client.create_flow_run("f/d", idempotency_key="new")
            assert again.id not in (new.id, old.id)
    finally:
        server.stop()
