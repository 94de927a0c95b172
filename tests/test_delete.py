"""``flowrun.delete``: who may remove a run, what it leaves behind, and its bad paths."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from services.orchestrator import Orchestrator
from services.orchestrator._publish import Publisher
from services.orchestrator._readmodel import ReadModel
from services.orchestrator._recovery import recover
from services.orchestrator._store import RunStore
from shared import names
from shared.clock import SystemClock
from shared.codec import encode
from shared.errors import Conflict, FlowRunNotFound, MalformedRequest
from shared.messages import (
    FlowRunCreated,
    FlowRunDeleted,
    FlowRunStateChanged,
    ListFlowRuns,
    ProposedState,
    RegisterDeployment,
)
from shared.models import FlowRun
from shared.states import State, StateType

from .test_contract import call, register

pytestmark = pytest.mark.anyio


async def _events(nc: NATS, run_id: str) -> list[dict]:
    sub = await nc.jetstream().subscribe(f"flowrun.events.{run_id}", ordered_consumer=True)
    out = []
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            out.append(json.loads(msg.data))
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def test_an_upcoming_run_is_deleted_over_raw_json(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    await register(nc, f"f-{unique}")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    run = await call(
        nc, "flowrun.create", {"deployment": f"f-{unique}/d", "scheduled_start_time": later}
    )
    reply = await call(nc, "flowrun.delete", {"id": run["id"], "reason": "not wanted"})
    assert reply == {"id": run["id"], "deleted": True}
    gone = await call(nc, "flowrun.read", {"id": run["id"]})
    assert gone["error"]["code"] == "flow_run_not_found"
    listed = await call(nc, "flowrun.list", {"deployment": f"f-{unique}/d"})
    assert listed["flow_runs"] == []
    events = await _events(nc, run["id"])
    assert [e["kind"] for e in events] == ["flowrun.created", "flowrun.deleted"]
    assert events[-1]["reason"] == "not wanted"
    assert events[-1]["revision"] > events[0]["revision"]
    again = await call(nc, "flowrun.delete", {"id": run["id"]})
    assert again["error"]["code"] == "flow_run_not_found"


async def test_finished_runs_may_be_deleted_running_ones_may_not(
    client: Client, unique: str
) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f-{unique}"))
    run = await client.create_flow_run(f"f-{unique}/d")
    for state in (StateType.PENDING, StateType.RUNNING):
        await client.propose_state(run.id, ProposedState(type=state))
    with pytest.raises(Conflict, match="cancel it first"):
        await client.delete_flow_run(run.id)
    assert (await client.read_flow_run(run.id)).state.type is StateType.RUNNING
    await client.propose_state(run.id, ProposedState(type=StateType.COMPLETED))
    # The scheduler's kind of delete removes only upcoming runs.
    with pytest.raises(Conflict, match="only an upcoming run"):
        await client.delete_flow_run(run.id, scheduled_only=True)
    deleted = await client.delete_flow_run(run.id)
    assert deleted.id == run.id
    with pytest.raises(FlowRunNotFound):
        await client.read_flow_run(run.id)
    page = await client.list_flow_runs(flow_name=f"f-{unique}")
    assert page.flow_runs == []


async def test_deleting_frees_the_idempotency_key(client: Client, unique: str) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f-{unique}"))
    later = datetime.now(UTC) + timedelta(hours=1)
    first = await client.create_flow_run(
        f"f-{unique}/d", idempotency_key="slot-1", scheduled_start_time=later
    )
    same = await client.create_flow_run(f"f-{unique}/d", idempotency_key="slot-1")
    assert same.id == first.id
    await client.delete_flow_run(first.id)
    again = await client.create_flow_run(
        f"f-{unique}/d", idempotency_key="slot-1", scheduled_start_time=later
    )
    assert again.id != first.id
    assert again.state.type is StateType.SCHEDULED
    page = await client.list_flow_runs(deployment=f"f-{unique}/d")
    assert [r.id for r in page.flow_runs] == [again.id]


async def test_a_claimed_run_is_not_deleted_and_bad_requests_are_refused(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    await register(nc, f"f-{unique}")
    run = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})
    claim = await call(
        nc, "flowrun.state.propose", {"id": run["id"], "state": {"type": "PENDING"}, "runner": "r"}
    )
    assert claim["status"] == "ACCEPT"
    refused = await call(nc, "flowrun.delete", {"id": run["id"]})
    assert refused["error"]["code"] == "conflict"
    assert "Pending" in refused["error"]["message"]
    typo = await call(nc, "flowrun.delete", {"id": run["id"], "sheduled_only": True})
    assert typo["error"]["code"] == MalformedRequest.code
    not_an_id = await call(nc, "flowrun.delete", {"id": "nope"})
    assert not_an_id["error"]["code"] == MalformedRequest.code
    unknown = await call(nc, "flowrun.delete", {"id": str(uuid.uuid4())})
    assert unknown["error"]["code"] == "flow_run_not_found"
    garbage = await call(nc, "flowrun.delete", b"\xff{")
    assert garbage["error"]["code"] == MalformedRequest.code


async def test_watching_a_run_that_gets_deleted_ends_with_not_found(
    client: Client, unique: str
) -> None:
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f-{unique}"))
    run = await client.create_flow_run(
        f"f-{unique}/d", scheduled_start_time=datetime.now(UTC) + timedelta(hours=1)
    )
    watch = client.watch_flow_run(run.id)
    first = await anext(watch)
    assert first.id == run.id
    await client.delete_flow_run(run.id)
    with pytest.raises(FlowRunNotFound, match="deleted"):
        await anext(watch)
    await watch.aclose()


async def test_a_delete_whose_event_was_lost_is_announced_by_recovery(
    client: Client, nc: NATS, unique: str
) -> None:
    """An orchestrator that died between the delete marker and its event: the
    next recovery publishes the event, and the run leaves the run list."""
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f-{unique}"))
    run = await client.create_flow_run(
        f"f-{unique}/d", scheduled_start_time=datetime.now(UTC) + timedelta(hours=1)
    )
    js = nc.jetstream()
    kv = await js.key_value(names.FLOW_RUNS_BUCKET)
    entry = await kv.get(run.id)
    await RunStore(kv, js).delete(run.id, entry.revision or 0)  # the marker, and no event
    assert [r.id for r in (await client.list_flow_runs(flow_name=f"f-{unique}")).flow_runs] == [
        run.id
    ]
    assert await recover(js, Publisher(js), SystemClock()) >= 1
    events = await _events(nc, run.id)
    assert events[-1]["kind"] == "flowrun.deleted"
    assert events[-1]["flow_run"]["id"] == run.id
    assert (await client.list_flow_runs(flow_name=f"f-{unique}")).flow_runs == []
    assert await recover(js, Publisher(js), SystemClock()) == 0  # published once


async def test_the_read_model_keeps_a_deleted_run_out_against_replayed_events(
    nc: NATS, tmp_path: Path
) -> None:
    """A duplicate of an older event, applied after the deletion, does not bring
    the run back; the same id stored again later (a freed key's run) does come back."""
    now = datetime.now(UTC)
    run = FlowRun(
        id=str(uuid.uuid4()),
        name="gone",
        flow_name="f",
        state=State(type=StateType.SCHEDULED, name="Scheduled", timestamp=now),
        created=now,
        updated=now,
        expected_start_time=now,
        tags=["t"],
    )
    created = FlowRunCreated(flow_run=run, revision=1, occurred=now)
    late = FlowRunStateChanged(flow_run=run, revision=2, occurred=now)
    deleted = FlowRunDeleted(flow_run=run, revision=3, occurred=now)
    again = FlowRunCreated(flow_run=run, revision=5, occurred=now)
    model = ReadModel(tmp_path / "runs.sqlite", nc)
    await model.open()
    try:
        everything = ListFlowRuns(flow_name="f")
        await model._apply([(1, encode(created)), (2, encode(deleted)), (3, encode(late))])
        assert (await model.query(everything, None)).flow_runs == []
        assert (await model.query(ListFlowRuns(tags=["t"]), None)).flow_runs == []
        await model._apply([(4, encode(again))])
        assert [r.id for r in (await model.query(everything, None)).flow_runs] == [run.id]
    finally:
        await model.close()
