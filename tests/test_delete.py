"""``flowrun.delete``: who may remove a run, what it leaves behind, and its bad paths."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from services.orchestrator import Orchestrator
from services.orchestrator._readmodel import ReadModel
from services.orchestrator._store import RunStore
from shared import names, runlog
from shared.codec import encode
from shared.errors import Conflict, FlowRunNotFound, MalformedRequest
from shared.messages import (
    FlowRunDeleted,
    ListFlowRuns,
    ProposedState,
    RegisterDeployment,
)
from shared.models import FlowRun, PastState
from shared.states import State, StateType

from .test_contract import call, register

pytestmark = pytest.mark.anyio


@dataclass
class _Meta:
    sequence: Any
    timestamp: datetime


class _Msg:
    """A message of the flow_runs stream as a consumer delivers it (subject,
    headers, body, stream sequence), made here so a test can replay old ones."""

    def __init__(self, subject: str, data: bytes, headers: dict | None, seq: int) -> None:
        self.subject, self.data, self.headers = subject, data, headers
        self.metadata = _Meta(sequence=SimpleNamespace(stream=seq), timestamp=datetime.now(UTC))


async def _newest_write(nc: NATS, run_id: str) -> Any:
    """The run's newest message in the flow_runs stream: its newest event."""
    return await nc.jetstream().get_last_msg(runlog.STREAM, runlog.subject(run_id))


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
    # The delete marker is the deletion event: the run as it was, and the reason.
    marker = await _newest_write(nc, run["id"])
    assert (marker.headers or {})["KV-Operation"] == "DEL"
    assert (marker.headers or {})["Sluice-Reason"] == "not wanted"
    assert json.loads(marker.data or b"")["id"] == run["id"]
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


async def test_a_delete_marker_is_the_event_even_without_the_run_in_it(
    client: Client, nc: NATS, unique: str
) -> None:
    """A marker written straight to the bucket (no event beside it) takes the run
    out of the run list; so does one with no body, as a tool writes it, whose
    event then names the run by id only."""
    await client.register_deployment(RegisterDeployment(name="d", flow_name=f"f-{unique}"))
    later = datetime.now(UTC) + timedelta(hours=1)
    runs = [await client.create_flow_run(f"f-{unique}/d", scheduled_start_time=later)]
    runs.append(await client.create_flow_run(f"f-{unique}/d", scheduled_start_time=later))
    js = nc.jetstream()
    kv = await js.key_value(names.FLOW_RUNS_BUCKET)
    entry = await kv.get(runs[0].id)
    await RunStore(kv, nc).delete(runs[0], entry.revision or 0, "line one\nline two")
    await kv.delete(runs[1].id)
    assert (await client.list_flow_runs(flow_name=f"f-{unique}")).flow_runs == []
    with_run, bare = [await _newest_write(nc, run.id) for run in runs]
    event = runlog.decode_entry(runs[0].id, with_run.data, with_run.headers, 9, datetime.now(UTC))
    assert isinstance(event, FlowRunDeleted) and event.flow_run is not None
    assert (event.flow_run.id, event.reason, event.revision) == (runs[0].id, "line one line two", 9)
    event = runlog.decode_entry(runs[1].id, bare.data, bare.headers, 10, datetime.now(UTC))
    assert isinstance(event, FlowRunDeleted)
    assert (event.flow_run_id, event.flow_run) == (runs[1].id, None)


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
    subject = runlog.subject(run.id)
    later = msgspec.structs.replace(run, history=[PastState(state=run.state, revision=1)])
    created = _Msg(subject, encode(run), None, 1)
    late = _Msg(subject, encode(later), None, 2)
    deleted = _Msg(subject, encode(run), {"KV-Operation": "DEL"}, 3)
    again = _Msg(subject, encode(run), None, 5)
    model = ReadModel(tmp_path / "runs.sqlite", nc)
    await model.open()
    try:
        everything = ListFlowRuns(flow_name="f")
        await model._apply_messages([created, deleted, late])
        assert (await model.query(everything, None)).flow_runs == []
        assert (await model.query(ListFlowRuns(tags=["t"]), None)).flow_runs == []
        await model._apply_messages([again])
        assert [r.id for r in (await model.query(everything, None)).flow_runs] == [run.id]
    finally:
        await model.close()
