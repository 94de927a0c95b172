"""Writes of one key that meet in flight, on a real 3-node cluster (R3 buckets).

A replicated stream's leader will not judge an expected sequence while another
write of the same key is still being replicated: it answers "wrong last
sequence" with no number (error 10164), which says nothing about whether the
key holds a value. A keyed create sent again while its first try is in flight
(a client that timed out during an election and tried again) meets exactly
that. It must wait for the first write and answer its run, never make a
second run for the key.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from engine.client import Client
from services.orchestrator import Orchestrator
from shared.messages import RegisterDeployment
from shared.models import FlowRun
from shared.settings import Settings

from .test_storage_faults import cluster, wait_for_jetstream

__all__ = ["cluster"]  # a fixture, used by name

pytestmark = pytest.mark.anyio

KEYS = 40
AT_ONCE = 3


async def test_a_key_created_again_while_its_write_is_in_flight_names_one_run(
    cluster: list, tmp_path: Path
) -> None:
    url = ",".join(n.url for n in cluster)
    await wait_for_jetstream(cluster[0].url)
    settings = Settings(nats_url=url, home=tmp_path / "home", replicas=3)
    async with Orchestrator(settings, grace=1), Client(settings) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name="keyed"))
        answers: dict[str, list[FlowRun]] = {}

        async def create(key: str) -> None:
            run = await c.create_flow_run("keyed/d", idempotency_key=key)
            answers.setdefault(key, []).append(run)

        for n in range(KEYS):
            async with anyio.create_task_group() as tg:
                for _ in range(AT_ONCE):  # the same create, in flight together
                    tg.start_soon(create, f"k{n}")
        for key, runs in answers.items():
            assert len({r.id for r in runs}) == 1, (key, [r.id for r in runs])
        listed = (await c.list_flow_runs(deployment="keyed/d", limit=10 * KEYS)).flow_runs
        assert sorted(r.idempotency_key or "" for r in listed) == sorted(answers)
