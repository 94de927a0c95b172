"""One claim per run: a runner serving a queue and deployments in it takes each item once."""

from __future__ import annotations

import collections
from datetime import UTC, datetime

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from engine.runner._filters import consumer_filters
from services.orchestrator import Orchestrator
from shared import names, telemetry
from shared.models import Deployment
from shared.settings import Settings
from shared.states import StateType

from .test_runner import deployment, finished, runner, running


def _deployment(id_: str, queue: str) -> Deployment:
    now = datetime.now(UTC)
    return Deployment(id=id_, name="d", flow_name="f", queue=queue, created=now, updated=now)


def test_deployments_in_the_runners_queue_get_no_consumer_of_their_own() -> None:
    served = ["in-q", "elsewhere"]
    known = {"in-q": _deployment("in-q", "q"), "elsewhere": _deployment("elsewhere", "other")}
    assert consumer_filters("q", served, known) == [
        [f"{names.DISPATCH_PREFIX}.q.>"],
        [f"{names.DISPATCH_PREFIX}.*.elsewhere"],
    ]
    assert consumer_filters("q", ["in-q"], known) == [[f"{names.DISPATCH_PREFIX}.q.>"]]
    # Without a queue every served deployment is pulled through one consumer.
    assert consumer_filters(None, served, known) == [
        [f"{names.DISPATCH_PREFIX}.*.elsewhere", f"{names.DISPATCH_PREFIX}.*.in-q"]
    ]


@pytest.mark.anyio
async def test_each_run_gets_one_claim_and_one_submit_span(
    orchestrator: Orchestrator, client: Client, settings: Settings, nc: NATS, unique: str
) -> None:
    """The ``sluice dev`` shape: a runner serving queue q and a deployment on q."""
    queue = f"q-{unique}"
    claims: collections.Counter[str] = collections.Counter()
    all_claimed = anyio.Event()

    async def count(msg: object) -> None:
        request = msgspec.json.decode(msg.data)  # type: ignore[attr-defined]
        if request["state"]["type"] == StateType.PENDING.value and request.get("runner"):
            claims[request["id"]] += 1
            if sum(claims.values()) >= 5:
                all_claimed.set()

    sub = await nc.subscribe(names.FLOWRUN_PROPOSE, cb=count)
    spans = telemetry.install_in_memory("sluice-test")
    try:
        r = runner(settings, name=f"dev-{unique}", queue=queue)
        await r.aadd_deployment(deployment(f"f{unique}", queue=queue))
        async with running(r):
            runs = [await client.create_flow_run(f"f{unique}/d") for _ in range(5)]
            done = await finished(client, runs)
            with anyio.fail_after(30):
                await all_claimed.wait()
        await nc.flush()
        finished_spans = spans.get_finished_spans()
    finally:
        telemetry.shutdown()
        await sub.unsubscribe()
    assert {d.state.type for d in done} == {StateType.COMPLETED}
    assert claims == {run.id: 1 for run in runs}
    submits = collections.Counter(
        (s.attributes or {}).get("sluice.flow_run.id")
        for s in finished_spans
        if s.name == "submit flowrun.dispatch.{queue}.{deployment_id}"
    )
    assert submits == {run.id: 1 for run in runs}
