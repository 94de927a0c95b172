"""The services as NATS micro services: discovery (``nats micro ls/info/stats``) sees
their endpoints and counts their requests and errors. Asked here the way the
``nats`` CLI asks, on the ``$SRV`` subjects.

A nats-server of this test's own: on the session's server other tests'
orchestrators may share the queue group and take some of the requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from services.dev import NatsServer
from services.orchestrator import Orchestrator
from shared import names
from shared.settings import Settings

pytestmark = pytest.mark.anyio


async def ask(nc: NATS, subject: str) -> dict:
    reply = await nc.request(subject, b"", timeout=10)
    return json.loads(reply.data)  # type: ignore[no-any-return]


async def test_the_orchestrator_is_a_micro_service_with_its_endpoints(
    own_server: NatsServer, tmp_path: Path
) -> None:
    settings = Settings(nats_url=own_server.url, home=tmp_path / "home", request_timeout=10.0)
    async with Orchestrator(settings, grace=2.0):
        nc = await nats.connect(own_server.url)
        try:
            ping = await ask(nc, "$SRV.PING.sluice-orchestrator")
            assert ping["type"] == "io.nats.micro.v1.ping_response"
            assert ping["name"] == "sluice-orchestrator"
            info = await ask(nc, f"$SRV.INFO.sluice-orchestrator.{ping['id']}")
            subjects = {e["subject"]: e for e in info["endpoints"]}
            assert names.FLOWRUN_CREATE in subjects and names.FLOWRUN_PROPOSE in subjects
            assert subjects[names.FLOWRUN_CREATE]["queue_group"] == names.ORCHESTRATOR_QUEUE

            # One good request and two bad ones (an unknown run; bytes that are not JSON).
            missing = json.dumps({"id": "00000000-0000-4000-8000-000000000000"}).encode()
            reply = await nc.request(names.FLOWRUN_READ, missing, timeout=10)
            assert b"flow_run_not_found" in reply.data  # the coded reply is unchanged
            await nc.request(names.FLOWRUN_READ, b"{not json", timeout=10)
            await nc.request(names.DEPLOYMENT_LIST, b"{}", timeout=10)

            stats = await ask(nc, f"$SRV.STATS.sluice-orchestrator.{ping['id']}")
        finally:
            await nc.close()
    by_subject = {e["subject"]: e for e in stats["endpoints"]}
    read = by_subject[names.FLOWRUN_READ]
    assert read["num_requests"] == 2 and read["num_errors"] == 2
    assert read["last_error"] == "malformed"
    assert read["processing_time"] > 0
    listed = by_subject[names.DEPLOYMENT_LIST]
    assert listed["num_requests"] == 1 and listed["num_errors"] == 0
