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
from shared import names
from shared.errors import _BY_CODE
from shared.settings import Settings

SUBJECTS = [
    names.FLOWRUN_CREATE,
    names.FLOWRUN_PROPOSE,
    names.FLOWRUN_CANCEL,
    names.FLOWRUN_READ,
    names.FLOWRUN_LIST,
    names.DEPLOYMENT_REGISTER,
    names.DEPLOYMENT_READ,
    names.DEPLOYMENT_LIST,
    names.DEPLOYMENT_PAUSE,
    names.DEPLOYMENT_RESUME,
    names.DEPLOYMENT_DELETE,
]
KNOWN_CODES = set(_BY_CODE) - {"error", "internal"}


@pytest.fixture(scope="module")
def stack(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BlockingPortal, NATS]]:
    """An orchestrator running in a background event loop, for sync hypothesis tests."""
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    with start_blocking_portal(backend_options={"use_uvloop": False}) as portal:
        orchestrator = Orchestrator(Settings(nats_url=nats_server.url, home=home), grace=1)
        with portal.wrap_async_context_manager(orchestrator):
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
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
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
