"""A run that starts later is still one trace: from the creator's ``send flowrun.create``
through the scheduler's dispatch, the runner, the flow-run process and its tasks.

Like tests/test_telemetry.py's end-to-end test, this process keeps its spans in
memory (client, orchestrator, scheduler, runner) and the flow-run process writes
its own to a file (``OTEL_TRACES_EXPORTER=sluice-file``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from engine.client import Client
from engine.runner import Runner
from engine.runner._subprocess import SubprocessFlowRunner
from services.scheduler import Scheduler
from shared.messages import RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

from .test_telemetry import ENGINE_TIMEOUT, FLOW_FILE, _until_idle, file_spans, hex_id
from .test_telemetry import spans as spans  # the fixture

pytestmark = pytest.mark.anyio


async def test_a_deferred_run_is_one_trace_from_create_to_its_tasks(
    spans: InMemorySpanExporter, client: Client, settings: Settings, unique: str, tmp_path: Path
) -> None:
    (tmp_path / "traced_flow.py").write_text(FLOW_FILE)
    deployment = await client.register_deployment(
        RegisterDeployment(
            name=f"later-{unique}",
            flow_name="traced",
            entrypoint="traced_flow.py:traced",
            path=str(tmp_path),
            queue=f"q-{unique}",
        )
    )
    out = tmp_path / "engine-spans.jsonl"
    flow_runner = SubprocessFlowRunner(
        env={
            "OTEL_TRACES_EXPORTER": "sluice-file",
            "SLUICE_OTEL_FILE": str(out),
            "SLUICE_NATS_URL": settings.nats_url,
        }
    )
    runner = Runner(
        name=f"later-{unique}", settings=settings, queue=deployment.queue, flow_runner=flow_runner
    )
    with anyio.fail_after(ENGINE_TIMEOUT):
        async with Scheduler(settings, grace=1.0), anyio.create_task_group() as tg:
            tg.start_soon(runner.astart)
            # What `sluice run --start-in 2s` sends.
            start = datetime.now(UTC) + timedelta(seconds=2)
            run = await client.create_flow_run(deployment.full_name, scheduled_start_time=start)
            final = await client.wait_for_flow_run(run.id)
            await _until_idle(runner)
            await runner.astop()
    assert final.state.type is StateType.COMPLETED, final.state
    assert final.traceparent is not None  # the creator's context, kept with the run

    here = spans.get_finished_spans()
    # The scheduler may create runs of other tests' schedules (one server per
    # session): this run's create is the one whose span names it.
    (create,) = [
        s
        for s in here
        if s.name == "send flowrun.create"
        and (s.attributes or {}).get("sluice.flow_run.id") == run.id  # the root names the run
    ]
    trace_id = create.context.trace_id
    assert create.parent is None

    def one(name: str) -> Any:
        matching = [s for s in here if s.name == name and s.context.trace_id == trace_id]
        assert len(matching) == 1, (name, [(s.name, s.context.trace_id) for s in here])
        return matching[0]

    # The orchestrator did not dispatch it (not due); the scheduler did, in the same trace.
    dispatch = one("send flowrun.dispatch.{queue}.{deployment_id}")
    assert dispatch.kind is SpanKind.PRODUCER
    # Each service in this one process names its own spans, as in `sluice dev`.
    assert dispatch.resource.attributes["service.name"] == "sluice-scheduler"
    assert create.resource.attributes["service.name"] == "sluice-test"
    served = one("process flowrun.create")
    assert served.resource.attributes["service.name"] == "sluice-orchestrator"
    assert dispatch.attributes is not None and dispatch.attributes["sluice.flow_run.id"] == run.id
    submit = one("submit flowrun.dispatch.{queue}.{deployment_id}")
    assert submit.parent is not None and submit.parent.span_id == dispatch.context.span_id

    there = file_spans(out)
    assert there and {s["context"]["trace_id"] for s in there} == {hex_id(trace_id, 32)}
    names = {s["name"] for s in there}
    assert {"execute flow run", "flow traced", "task double", "task add"} <= names
