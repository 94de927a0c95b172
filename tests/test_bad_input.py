"""Whatever bytes arrive, every subject answers with a coded error or a valid reply.

No request may crash the orchestrator, and none may earn an ``internal``
error: that code means a bug on our side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from services.dev import NatsServer
from services.orchestrator import Orchestrator
from services.scheduler import Scheduler
from shared import names
from shared.errors import _BY_CODE
from shared.settings import Settings

SUBJECTS = [
    names.FLOWRUN_CREATE,
    names.FLOWRUN_PROPOSE,
    names.FLOWRUN_RETRY,
    names.FLOWRUN_DELETE,
    names.FLOWRUN_CANCEL,
    names.FLOWRUN_READ,
    names.FLOWRUN_LIST,
    names.DEPLOYMENT_REGISTER,
    names.DEPLOYMENT_READ,
    names.DEPLOYMENT_LIST,
    names.DEPLOYMENT_PAUSE,
    names.DEPLOYMENT_RESUME,
    names.DEPLOYMENT_DELETE,
    names.DEPLOYMENT_BACKFILL,
    names.RUNNER_HEARTBEAT,
    names.RUNNER_CONSUMER,
]
KNOWN_CODES = set(_BY_CODE) - {"error", "internal"}


@pytest.fixture(scope="module")
def stack(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BlockingPortal, NATS]]:
    """An orchestrator and a scheduler (it serves deployment.backfill) running in a
    background event loop, for sync hypothesis tests."""
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    settings = Settings(nats_url=nats_server.url, home=home)
    with start_blocking_portal(backend_options={"use_uvloop": False}) as portal:
        orchestrator = Orchestrator(settings, grace=1)
        with (
            portal.wrap_async_context_manager(orchestrator),
            portal.wrap_async_context_manager(Scheduler(settings, grace=1)),
        ):
            nc = portal.call(nats.connect, nats_server.url)
            yield portal, nc
            portal.call(nc.close)


def ask(stack: tuple[BlockingPortal, NATS], subject: str, data: bytes) -> Any:
    portal, nc = stack

    async def go() -> bytes:
        return (await nc.request(subject, data, timeout=10)).data

    return json.loads(portal.call(go))


def assert_well_formed(reply: Any) -> None:
    assert isinstance(reply, dict), reply
    if "error" in reply:
        error = reply["error"]
        assert error["code"] in KNOWN_CODES, error
        assert isinstance(error["message"], str) and error["message"], error


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "malformed"),
        (b"   ", "malformed"),
        (b"{not json", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (b'"just a string"', "malformed"),
        (b"\xff\xfe\x00garbage", "malformed"),
        (b'{"id": 42, "deployment": ["x"], "limit": "many"}', "malformed"),
        (b'{"paramaters": {}}', "malformed"),
    ],
)
def test_bad_bodies_get_coded_errors(
    stack: tuple[BlockingPortal, NATS], subject: str, body: bytes, code: str
) -> None:
    reply = ask(stack, subject, body)
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]


def test_unknown_field_is_named(stack: tuple[BlockingPortal, NATS]) -> None:
    reply = ask(stack, names.FLOWRUN_CREATE, b'{"deployment": "a/b", "paramaters": {"x": 1}}')
    assert reply["error"]["code"] == "malformed"
    assert "paramaters" in reply["error"]["message"]


def test_ten_megabytes_of_junk(stack: tuple[BlockingPortal, NATS]) -> None:
    junk = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    for subject in (names.FLOWRUN_CREATE, names.FLOWRUN_PROPOSE, names.DEPLOYMENT_REGISTER):
        reply = ask(stack, subject, junk)
        assert reply["error"]["code"] == "payload_too_large"
        assert str(len(junk)) in reply["error"]["message"]


def test_unknown_deployment_and_run(stack: tuple[BlockingPortal, NATS]) -> None:
    missing = "00000000-0000-4000-8000-00000000dead"
    reply = ask(stack, names.FLOWRUN_CREATE, b'{"deployment": "nope/never"}')
    assert reply["error"]["code"] == "deployment_not_found"
    reply = ask(stack, names.FLOWRUN_CREATE, json.dumps({"deployment_id": missing}).encode())
    assert reply["error"]["code"] == "deployment_not_found"
    for subject in (names.FLOWRUN_READ, names.FLOWRUN_CANCEL):
        reply = ask(stack, subject, json.dumps({"id": missing}).encode())
        assert reply["error"]["code"] == "flow_run_not_found"
    reply = ask(
        stack,
        names.FLOWRUN_PROPOSE,
        json.dumps({"id": missing, "state": {"type": "RUNNING"}}).encode(),
    )
    assert reply["error"]["code"] == "flow_run_not_found"
    reply = ask(stack, names.FLOWRUN_CREATE, b"{}")
    assert reply["error"]["code"] == "malformed"
    assert "exactly one of" in reply["error"]["message"]


FIELDS = [
    "id",
    "deployment",
    "deployment_id",
    "flow_name",
    "name",
    "parameters",
    "state",
    "type",
    "scheduled_start_time",
    "idempotency_key",
    "tags",
    "limit",
    "offset",
    "states",
    "since",
    "attempt",
    "retry",
    "runner",
    "transition_id",
    "schedules",
    "parameter_schema",
    "version",
    "concurrency_limit",
    "interval",
    "runs",
    "filters",
    "grace_seconds",
    "cascade",
    "release",
    "details",
    "start",
    "end",
    "until",
]
#: Integers where storage and arithmetic break: around 2**31, 2**63 and 2**64.
edge_integers = (
    st.sampled_from(
        [-(2**64), -(2**63) - 1, -1, 0, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30]
    )
    | st.integers()
)
edge_times = st.sampled_from(
    ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1970-01-01T00:00:00+14:00", "2026-13-40"]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | edge_integers
    | st.floats(allow_nan=False)
    | edge_times
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
near_miss = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6).map(
    lambda d: json.dumps(d).encode()
)
payloads = st.one_of(
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_miss,
)


@hsettings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(subject=st.sampled_from(SUBJECTS), body=payloads)
def test_fuzzed_requests_never_break_the_service(
    stack: tuple[BlockingPortal, NATS], subject: str, body: bytes
) -> None:
    assert_well_formed(ask(stack, subject, body))


def test_still_serving_after_the_abuse(stack: tuple[BlockingPortal, NATS]) -> None:
    dep = ask(stack, names.DEPLOYMENT_REGISTER, b'{"name": "after", "flow_name": "fuzz"}')
    run = ask(stack, names.FLOWRUN_CREATE, b'{"deployment": "fuzz/after"}')
    assert run["deployment_id"] == dep["id"]


# --- every integer has a range --------------------------------------------------------
RUN_ID = "00000000-0000-4000-8000-00000000beef"


@pytest.mark.parametrize(
    ("subject", "body", "field"),
    [
        (names.FLOWRUN_LIST, {"offset": 2**63}, "offset"),
        (names.FLOWRUN_LIST, {"offset": -1}, "offset"),
        (names.FLOWRUN_LIST, {"limit": 2**64}, "limit"),
        (names.DEPLOYMENT_LIST, {"offset": 2**63}, "offset"),
        (
            names.DEPLOYMENT_REGISTER,
            {"name": "d", "flow_name": "f", "concurrency_limit": 2**64},
            "concurrency_limit",
        ),
        (
            names.DEPLOYMENT_REGISTER,
            {"name": "d", "flow_name": "f", "concurrency_limit": 0},
            "concurrency_limit",
        ),
        (names.RUNNER_HEARTBEAT, {"runner": "r", "interval": 1, "limit": -1}, "limit"),
        (names.RUNNER_HEARTBEAT, {"runner": "r", "interval": 1, "limit": 2**64}, "limit"),
        (
            names.RUNNER_HEARTBEAT,
            {"runner": "r", "interval": 1, "runs": [{"id": RUN_ID, "attempt": 2**63}]},
            "attempt",
        ),
        (
            names.FLOWRUN_PROPOSE,
            {"id": RUN_ID, "state": {"type": "RUNNING"}, "attempt": 2**63},
            "attempt",
        ),
        (
            names.FLOWRUN_PROPOSE,
            {"id": RUN_ID, "state": {"type": "RUNNING", "details": {"retry_count": -1}}},
            "retry_count",
        ),
        (
            names.DEPLOYMENT_REGISTER,
            {
                "name": "d",
                "flow_name": "f",
                "schedules": [{"schedule": {"type": "interval", "interval": 1e300}}],
            },
            "interval",
        ),
    ],
)
def test_out_of_range_integers_are_malformed_naming_the_field(
    stack: tuple[BlockingPortal, NATS], subject: str, body: dict[str, Any], field: str
) -> None:
    reply = ask(stack, subject, json.dumps(body).encode())
    assert reply["error"]["code"] == "malformed", reply
    assert field in reply["error"]["message"], reply


# --- typed requests with extreme values, on every subject ------------------------------
def _requests(subject: str) -> st.SearchStrategy[dict[str, Any]]:
    """Requests shaped as ``subject`` expects, with extreme numbers and times."""
    anything = json_values
    number = edge_integers | st.floats(allow_nan=False)
    ident = st.sampled_from([RUN_ID, "not-a-uuid", ""]) | st.uuids().map(str)
    state = st.fixed_dictionaries(
        {"type": st.sampled_from(["SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "CANCELLED"])},
        optional={
            "details": st.fixed_dictionaries(
                {}, optional={"retry_count": number, "scheduled_time": edge_times}
            ),
            "data": anything,
        },
    )
    optional: dict[str, st.SearchStrategy[Any]] = {
        "limit": number,
        "offset": number,
        "attempt": number,
        "concurrency_limit": number,
        "interval": number,
        "grace_seconds": number,
        "since": edge_times,
        "until": edge_times,
        "scheduled_start_time": edge_times,
        "parameters": st.dictionaries(st.text(max_size=5), anything, max_size=3),
        "schedules": st.lists(
            st.fixed_dictionaries(
                {
                    "schedule": st.fixed_dictionaries(
                        {"type": st.just("interval"), "interval": number}
                    )
                },
                optional={"catchup_window_seconds": number},
            ),
            max_size=2,
        ),
        "runs": st.lists(st.fixed_dictionaries({"id": ident, "attempt": number}), max_size=2),
        "filters": st.lists(st.sampled_from(["flowrun.dispatch.q.>", "x", ""]), max_size=2),
        "start": edge_times,
        "end": edge_times,
    }
    required: dict[str, st.SearchStrategy[Any]] = {}
    if subject in (names.FLOWRUN_PROPOSE, names.FLOWRUN_RETRY):
        required = {"id": ident, "state": state}
        optional["retry"] = st.booleans()
    elif subject in (names.FLOWRUN_READ, names.FLOWRUN_CANCEL, names.FLOWRUN_DELETE):
        required = {"id": ident}
    elif subject == names.FLOWRUN_CREATE:
        required = {"flow_name": st.just("fuzz-typed")}
    elif subject == names.DEPLOYMENT_REGISTER:
        required = {"name": st.just("typed"), "flow_name": st.just("fuzz-typed")}
    elif subject == names.RUNNER_HEARTBEAT:
        required = {"runner": st.just("fuzzer"), "interval": number}
    elif subject == names.DEPLOYMENT_BACKFILL:
        required = {"name": st.just("fuzz-typed/typed"), "start": edge_times}
    elif subject == names.RUNNER_CONSUMER:
        required = {"filters": optional.pop("filters")}
    optional = {k: v for k, v in optional.items() if k not in required}
    return st.fixed_dictionaries(required, optional=optional).map(
        lambda d: {k: v for k, v in d.items() if k in required or k in _FIELDS_OF[subject]}
    )


_FIELDS_OF: dict[str, set[str]] = {
    names.FLOWRUN_CREATE: {"parameters", "scheduled_start_time"},
    names.FLOWRUN_PROPOSE: {"attempt", "retry"},
    names.FLOWRUN_RETRY: {"attempt", "retry"},
    names.FLOWRUN_CANCEL: set(),
    names.FLOWRUN_DELETE: set(),
    names.FLOWRUN_READ: set(),
    names.FLOWRUN_LIST: {"limit", "offset", "since", "until"},
    names.DEPLOYMENT_REGISTER: {"concurrency_limit", "schedules", "parameters"},
    names.DEPLOYMENT_READ: set(),
    names.DEPLOYMENT_LIST: {"limit", "offset"},
    names.DEPLOYMENT_PAUSE: set(),
    names.DEPLOYMENT_RESUME: set(),
    names.DEPLOYMENT_DELETE: set(),
    names.DEPLOYMENT_BACKFILL: {"end"},
    names.RUNNER_HEARTBEAT: {"runs"},
    names.RUNNER_CONSUMER: set(),
}


@hsettings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), subject=st.sampled_from(SUBJECTS))
def test_typed_requests_with_extreme_values_never_answer_internal(
    stack: tuple[BlockingPortal, NATS], data: st.DataObject, subject: str
) -> None:
    body = data.draw(_requests(subject))
    assert_well_formed(ask(stack, subject, json.dumps(body).encode()))
