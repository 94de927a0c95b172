"""The public JSON contract, driven by a raw nats-py client as any NATS client would."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from services.orchestrator import Orchestrator

pytestmark = pytest.mark.anyio


async def call(nc: NATS, subject: str, body: Any) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=10)
    return json.loads(msg.data)


async def register(nc: NATS, flow: str, name: str = "d", **fields: Any) -> dict[str, Any]:
    reply = await call(nc, "deployment.register", {"name": name, "flow_name": flow, **fields})
    assert "error" not in reply, reply
    return reply


async def test_minimal_create_is_stored_as_json(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    dep = await register(nc, f"etl-{unique}", parameters={"day": "today"})
    run = await call(nc, "flowrun.create", {"deployment": f"etl-{unique}/d"})
    assert run["deployment_id"] == dep["id"]
    assert run["flow_name"] == f"etl-{unique}"
    assert run["parameters"] == {"day": "today"}
    assert run["state"]["type"] == "SCHEDULED"
    assert run["state"]["name"] == "Scheduled"
    uuid.UUID(run["id"])
    assert run["name"]  # a generated readable name
    assert datetime.fromisoformat(run["created"]).tzinfo is not None

    # The KV value is the same plain JSON, readable by any client.
    kv = await nc.jetstream().key_value("flow_runs")
    stored = json.loads((await kv.get(run["id"])).value)
    assert stored == run


async def test_create_with_every_optional_field(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    dep = await register(nc, f"f-{unique}", parameters={"a": 1, "b": 2}, tags=["team-x"])
    later = datetime.now(UTC) + timedelta(hours=1)
    run = await call(
        nc,
        "flowrun.create",
        {
            "deployment_id": dep["id"],
            "parameters": {"b": 3},
            "name": "my-run",
            "scheduled_start_time": later.isoformat(),
            "idempotency_key": "k1",
            "tags": ["adhoc"],
        },
    )
    assert run["parameters"] == {"a": 1, "b": 3}
    assert run["name"] == "my-run"
    assert datetime.fromisoformat(run["expected_start_time"]) == later
    assert run["state"]["details"]["scheduled_time"] == run["expected_start_time"]
    assert run["tags"] == ["adhoc", "team-x"]
    assert run["idempotency_key"] == "k1"


async def test_idempotency_key_answers_the_first_run(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    await register(nc, f"f-{unique}")
    body = {"deployment": f"f-{unique}/d", "idempotency_key": "nightly-2026-11-20"}
    first = await call(nc, "flowrun.create", body)
    again = await call(nc, "flowrun.create", {**body, "parameters": {"ignored": True}})
    assert again["id"] == first["id"]
    other = await call(nc, "flowrun.create", {**body, "idempotency_key": "nightly-2026-11-21"})
    assert other["id"] != first["id"]


async def test_newest_version_wins_for_a_name(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    v1 = await register(nc, f"f-{unique}", version="1")
    v2 = await register(nc, f"f-{unique}", version="2")
    assert v1["id"] != v2["id"]
    same = await register(nc, f"f-{unique}", version="2", description="updated")
    assert same["id"] == v2["id"]
    run = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})
    assert run["deployment_id"] == v2["id"]
    assert run["deployment_version"] == "2"
    pinned = await call(nc, "flowrun.create", {"deployment_id": v1["id"]})
    assert pinned["deployment_version"] == "1"


async def test_propose_and_cancel_over_raw_json(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    dep = await register(nc, f"f-{unique}")
    run = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})
    claim = await call(
        nc,
        "flowrun.state.propose",
        {"id": run["id"], "state": {"type": "PENDING"}, "runner": "r1", "attempt": 0},
    )
    assert claim["status"] == "ACCEPT"
    assert claim["attempt"] == 1
    assert claim["state"]["details"]["runner"] == "r1"
    # the claimer is told the run as claimed and its deployment: no reads before starting it
    assert claim["flow_run"]["state"] == claim["state"]
    assert claim["deployment"] == dep
    running = await call(
        nc, "flowrun.state.propose", {"id": run["id"], "state": {"type": "RUNNING"}, "attempt": 1}
    )
    assert running["status"] == "ACCEPT"
    assert running["flow_run"]["state"]["type"] == "RUNNING"
    assert running["deployment"] is None  # only a claim carries it
    cancel = await call(nc, "flowrun.cancel", {"id": run["id"]})
    assert cancel["state"]["type"] == "CANCELLING"
    refused = await call(
        nc, "flowrun.state.propose", {"id": run["id"], "state": {"type": "COMPLETED"}}
    )
    assert refused["status"] == "REJECT"
    assert refused["state"]["type"] == "CANCELLING"
    done = await call(
        nc, "flowrun.state.propose", {"id": run["id"], "state": {"type": "CANCELLED"}}
    )
    assert done["status"] == "ACCEPT"
    again = await call(nc, "flowrun.cancel", {"id": run["id"]})  # harmless
    assert again["state"]["type"] == "CANCELLED"


async def test_cancel_before_start_and_after_the_end(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    await register(nc, f"f-{unique}")
    run = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})
    cancelled = await call(nc, "flowrun.cancel", {"id": run["id"], "reason": "not today"})
    assert cancelled["state"]["type"] == "CANCELLED"
    assert cancelled["state"]["message"] == "not today"
    claim = await call(nc, "flowrun.state.propose", {"id": run["id"], "state": {"type": "PENDING"}})
    assert claim["status"] == "ABORT"  # never started afterwards

    finished = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})
    for state in ("RUNNING", "COMPLETED"):
        reply = await call(
            nc, "flowrun.state.propose", {"id": finished["id"], "state": {"type": state}}
        )
        assert reply["status"] == "ACCEPT"
    refused = await call(nc, "flowrun.cancel", {"id": finished["id"]})
    assert refused["error"]["code"] == "conflict"
    assert "Completed" in refused["error"]["message"]


async def test_each_accepted_transition_is_one_write_and_its_event(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    """A plain NATS subscriber of ``$KV.flow_runs.<id>`` sees every accepted
    transition as the run's record, which carries the states before it; a
    transition that does not make the run due writes nothing else durable."""
    await register(nc, f"f-{unique}")
    run = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})  # and its dispatch
    js = nc.jetstream()
    writes = await nc.subscribe(f"$KV.flow_runs.{run['id']}")
    durable_before = sum(s.state.last_seq for s in await js.streams_info())
    for state in ("PENDING", "RUNNING", "RUNNING", "COMPLETED", "RUNNING"):
        await call(nc, "flowrun.state.propose", {"id": run["id"], "state": {"type": state}})
    durable_after = sum(s.state.last_seq for s in await js.streams_info())
    assert durable_after - durable_before == 4  # the refused Completed -> Running wrote nothing
    records = [json.loads((await writes.next_msg(timeout=5)).data) for _ in range(4)]
    await writes.unsubscribe()
    assert [r["state"]["type"] for r in records] == ["PENDING", "RUNNING", "RUNNING", "COMPLETED"]
    last = records[-1]
    past = [p["state"]["type"] for p in last["history"]]
    assert past == ["SCHEDULED", "PENDING", "RUNNING", "RUNNING"]
    revisions = [p["revision"] for p in last["history"]]
    assert revisions == sorted(revisions) and len(set(revisions)) == 4
    assert last["history_dropped"] == 0
    stored = await js.get_last_msg("KV_flow_runs", f"$KV.flow_runs.{run['id']}")
    assert stored.seq > revisions[-1]
    assert json.loads(stored.data or b"") == last


async def test_due_runs_are_dispatched_future_runs_are_not(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    queue = f"q{unique}"
    await register(nc, f"f-{unique}", queue=queue)
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"flowrun.dispatch.{queue}.>", durable=f"t{unique}")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d", "scheduled_start_time": later})
    due = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})
    msgs = await sub.fetch(10, timeout=5)
    assert [json.loads(m.data)["flow_run_id"] for m in msgs] == [due["id"]]
    for m in msgs:
        await m.ack()


async def test_list_filters_and_pages(orchestrator: Orchestrator, nc: NATS, unique: str) -> None:
    flow = f"f-{unique}"
    await register(nc, flow, name="a")
    await register(nc, flow, name="b")
    base = datetime(2031, 1, 1, tzinfo=UTC)
    ids = []
    for i in range(7):
        run = await call(
            nc,
            "flowrun.create",
            {
                "deployment": f"{flow}/{'a' if i % 2 else 'b'}",
                "scheduled_start_time": (base + timedelta(minutes=i)).isoformat(),
                "tags": ["odd"] if i % 2 else ["even"],
            },
        )
        ids.append(run["id"])
    await call(nc, "flowrun.cancel", {"id": ids[0]})

    async def listed(**filters: Any) -> dict[str, Any]:
        return await call(nc, "flowrun.list", {"flow_name": flow, **filters})

    page = await listed(limit=3)
    assert [r["id"] for r in page["flow_runs"]] == ids[::-1][:3]  # newest first
    assert page["next_offset"] == 3
    rest = await listed(limit=10, offset=3)
    assert [r["id"] for r in rest["flow_runs"]] == ids[::-1][3:]
    assert rest["next_offset"] is None
    odd = await listed(tags=["odd"])
    assert {r["id"] for r in odd["flow_runs"]} == set(ids[1::2])
    by_dep = await listed(deployment=f"{flow}/a")
    assert {r["id"] for r in by_dep["flow_runs"]} == set(ids[1::2])
    cancelled = await listed(states=["CANCELLED"])
    assert [r["id"] for r in cancelled["flow_runs"]] == [ids[0]]
    by_name = await listed(states=["cancelled", "Late"])
    assert [r["id"] for r in by_name["flow_runs"]] == [ids[0]]
    window = await listed(
        since=(base + timedelta(minutes=2)).isoformat(),
        until=(base + timedelta(minutes=4)).isoformat(),
    )
    assert [r["id"] for r in window["flow_runs"]] == [ids[3], ids[2]]


async def test_deployment_lifecycle(orchestrator: Orchestrator, nc: NATS, unique: str) -> None:
    flow = f"f-{unique}"
    dep = await register(nc, flow, name="only")
    by_flow = await call(nc, "deployment.read", {"name": flow})
    assert by_flow["id"] == dep["id"]
    paused = await call(nc, "deployment.pause", {"name": f"{flow}/only"})
    assert paused["paused"] is True
    listed = await call(nc, "deployment.list", {"flow_name": flow})
    assert [d["paused"] for d in listed["deployments"]] == [True]
    resumed = await call(nc, "deployment.resume", {"id": dep["id"]})
    assert resumed["paused"] is False
    await register(nc, flow, name="second")
    ambiguous = await call(nc, "flowrun.create", {"deployment": flow})
    assert ambiguous["error"]["code"] == "ambiguous_name"
    assert ambiguous["error"]["details"]["choices"] == [f"{flow}/only", f"{flow}/second"]
    deleted = await call(nc, "deployment.delete", {"name": f"{flow}/only"})
    assert deleted == {"id": dep["id"], "deleted": True}
    gone = await call(nc, "flowrun.create", {"deployment": f"{flow}/only"})
    assert gone["error"]["code"] == "deployment_not_found"
    assert f"{flow}/second" in gone["error"]["message"]  # says what does exist


async def test_parameters_are_checked_against_the_schema(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "who": {"type": "string"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    await register(nc, f"f-{unique}", parameter_schema=schema, parameters={"who": "world"})
    ok = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d", "parameters": {"n": 3}})
    assert ok["parameters"] == {"n": 3, "who": "world"}
    bad = await call(
        nc, "flowrun.create", {"deployment": f"f-{unique}/d", "parameters": {"n": "three"}}
    )
    assert bad["error"]["code"] == "invalid_parameters"
    assert bad["error"]["details"]["problems"][0]["parameter"] == "n"
    missing = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/d"})
    assert missing["error"]["code"] == "invalid_parameters"
    assert "'n' is a required property" in missing["error"]["message"]

    await register(
        nc, f"f-{unique}", name="lax", parameter_schema=schema, enforce_parameter_schema=False
    )
    lax = await call(nc, "flowrun.create", {"deployment": f"f-{unique}/lax", "parameters": {}})
    assert lax["parameters"] == {}

    broken = await call(
        nc,
        "deployment.register",
        {"name": "x", "flow_name": f"f-{unique}", "parameter_schema": {"type": 12}},
    )
    assert broken["error"]["code"] == "invalid_parameters"


async def test_invalid_schedules_are_refused_naming_the_field(
    orchestrator: Orchestrator, nc: NATS, unique: str
) -> None:
    reply = await call(
        nc,
        "deployment.register",
        {
            "name": "d",
            "flow_name": f"f-{unique}",
            "schedules": [
                {"schedule": {"type": "cron", "cron": "0 2 * * *"}},
                {"schedule": {"type": "cron", "cron": "61 * * * *"}},
            ],
        },
    )
    assert reply["error"]["code"] == "malformed"
    assert "schedules[1].schedule.cron" in reply["error"]["message"]
    rrule = await call(
        nc,
        "deployment.register",
        {
            "name": "d",
            "flow_name": f"f-{unique}",
            "schedules": [{"schedule": {"type": "rrule", "rrule": "FREQ=SOMETIMES"}}],
        },
    )
    assert "schedules[0].schedule.rrule" in rrule["error"]["message"]
    tz = await call(
        nc,
        "deployment.register",
        {
            "name": "d",
            "flow_name": f"f-{unique}",
            "schedules": [
                {"schedule": {"type": "interval", "interval": 60, "timezone": "Mars/Base"}}
            ],
        },
    )
    assert "schedules[0].schedule.timezone" in tz["error"]["message"]


async def test_runs_without_a_deployment(orchestrator: Orchestrator, nc: NATS, unique: str) -> None:
    js = nc.jetstream()
    run = await call(nc, "flowrun.create", {"flow_name": f"adhoc-{unique}", "parameters": {"x": 1}})
    assert run["deployment_id"] is None
    assert run["flow_name"] == f"adhoc-{unique}"
    # nobody could run it from a deployment, so it is not offered to runners
    info = await js.stream_info("FLOWRUN_DISPATCH", subjects_filter="flowrun.dispatch.>")
    assert run["id"] not in json.dumps(info.state.subjects or {})
