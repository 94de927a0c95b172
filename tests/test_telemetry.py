"""Tracing: the W3C context over NATS headers and process environments, the
exporters chosen by OTEL_*, and one trace spanning a flow run's services.

The end-to-end test follows a run the way it goes: created through the
client (in this process, with the in-process orchestrator), dispatched,
taken by a real Runner, and executed in the flow-run process that runner
starts, whose ``TRACEPARENT`` names the runner's span. Spans of this process
are kept in memory; the flow-run process writes its own to a file
(``OTEL_TRACES_EXPORTER=sluice-file``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from engine import flow, task
from engine.client import Client
from engine.runner import Runner
from engine.runner._subprocess import SubprocessFlowRunner
from shared import names, telemetry
from shared.messages import RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

REPO = Path(__file__).parents[1]
ENGINE_TIMEOUT = 120.0

FLOW_FILE = """
from engine import flow, task


@task
def double(x: int) -> int:
    return 2 * x


@task
def add(a: int, b: int) -> int:
    return a + b


@flow
def traced(x: int = 2) -> int:
    return add(double(x), double.submit(x + 1).result())
"""


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = telemetry.install_in_memory("sluice-test")
    try:
        yield exporter
    finally:
        telemetry.shutdown()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without tracing or run settings, plus ``extra``."""
    drop = ("OTEL_", "TRACEPARENT", "TRACESTATE", "SLUICE_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


# --- off by default --------------------------------------------------------------------------
def test_without_an_exporter_tracing_is_off_and_every_helper_passes_through() -> None:
    telemetry.shutdown()
    try:
        assert telemetry.setup("sluice-test", {}) is False
        assert telemetry.setup("sluice-test", {"OTEL_TRACES_EXPORTER": "none"}) is False
        assert not telemetry.enabled()
        env = {"PATH": "/bin"}
        assert telemetry.env_with_trace(env) is env
        assert telemetry.inject_headers({"a": "b"}) == {"a": "b"}
        assert (
            telemetry.context_from_headers(
                {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            )
            is None
        )
        assert telemetry.context_from_env({"TRACEPARENT": "x"}) is None
        with telemetry.request_span("flowrun.create") as headers:
            assert headers is None
        with telemetry.span("anything") as current:
            assert current is None
    finally:
        telemetry.shutdown()


def test_sdk_disabled_wins_over_an_exporter() -> None:
    telemetry.shutdown()
    try:
        env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
        assert telemetry.setup("sluice-test", env) is False
    finally:
        telemetry.shutdown()


def otlp_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(otlp_installed(), reason="the OTLP exporter is installed here")
def test_otlp_without_its_package_warns_once_and_stays_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry.shutdown()
    try:
        with caplog.at_level(logging.WARNING, logger="sluice.telemetry"):
            assert telemetry.setup("sluice-test", {"OTEL_TRACES_EXPORTER": "otlp"}) is False
            assert telemetry.setup("sluice-test", {"OTEL_TRACES_EXPORTER": "otlp"}) is False
        warnings = [r.getMessage() for r in caplog.records if r.name == "sluice.telemetry"]
        assert len(warnings) == 1
        assert "opentelemetry-exporter-otlp-proto-http" in warnings[0]
        assert "sluice[otlp]" in warnings[0]
    finally:
        telemetry.shutdown()


# --- carrying the context -------------------------------------------------------------------
def test_headers_and_environment_carry_the_context_across(spans: InMemorySpanExporter) -> None:
    with telemetry.span("parent") as parent:
        assert parent is not None
        headers = telemetry.inject_headers({"Nats-Msg-Id": "x"})
        env = telemetry.env_with_trace(
            {"PATH": "/bin", "TRACEPARENT": "stale", "TRACESTATE": "old"}
        )
    assert headers["Nats-Msg-Id"] == "x" and headers["traceparent"].startswith("00-")
    assert env["TRACEPARENT"] == headers["traceparent"] and "TRACESTATE" not in env
    with telemetry.span("from headers", context=telemetry.context_from_headers(headers)):
        pass
    with telemetry.activated(telemetry.context_from_env(env)), telemetry.span("from env"):
        pass
    by_name = {s.name: s for s in spans.get_finished_spans()}
    parent_ctx = by_name["parent"].context
    for name in ("from headers", "from env"):
        child = by_name[name]
        assert child.context.trace_id == parent_ctx.trace_id
        assert child.parent is not None and child.parent.span_id == parent_ctx.span_id
        assert child.parent.is_remote


def test_tracestate_travels_with_traceparent(spans: InMemorySpanExporter) -> None:
    incoming = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=abc",
    }
    with telemetry.span("child", context=telemetry.context_from_headers(incoming)):
        env = telemetry.env_with_trace({})
    assert env["TRACEPARENT"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert env["TRACESTATE"] == "vendor=abc"


def test_the_file_exporter_writes_one_json_span_per_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry.shutdown()
    try:
        env = {
            "OTEL_TRACES_EXPORTER": "sluice-file",
            "SLUICE_OTEL_FILE": str(path),
            "OTEL_SERVICE_NAME": "custom-name",
        }
        assert telemetry.setup("sluice-test", env) is True
        attrs = telemetry.messaging_attributes("flowrun.create", "send")
        with telemetry.span("one", kind="producer", attributes=attrs), telemetry.span("two"):
            pass
    finally:
        telemetry.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["name"] for s in lines] == ["two", "one"]
    assert lines[1]["attributes"]["messaging.system"] == "nats"
    assert lines[1]["resource"]["attributes"]["service.name"] == "custom-name"


def test_a_flow_run_is_a_span_with_its_task_runs_inside(spans: InMemorySpanExporter) -> None:
    @task(retries=1)
    def flaky(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    @flow
    def outer() -> int:
        flaky(1)
        flaky.submit(-1).wait()
        return 3

    assert outer() == 3
    finished = spans.get_finished_spans()
    (flow_span,) = [s for s in finished if s.name == "flow outer"]
    tasks = [s for s in finished if s.name == "task flaky"]
    assert len(tasks) == 2
    for span in tasks:
        assert span.parent is not None and span.parent.span_id == flow_span.context.span_id
    failed = next(
        s for s in tasks if s.attributes and s.attributes["sluice.state.type"] == "FAILED"
    )
    assert not failed.status.is_ok
    names = [e.name for e in failed.events]
    assert names == ["Running", "AwaitingRetry", "Retrying", "Failed", "exception"]
    # The failure as OpenTelemetry's semantic conventions record an exception.
    event = failed.events[-1].attributes or {}
    assert event["exception.type"] == "ValueError"
    assert event["exception.message"] == "negative"
    assert 'raise ValueError("negative")' in str(event["exception.stacktrace"])
    assert (failed.attributes or {})["error.type"] == "ValueError"
    assert flow_span.attributes is not None
    assert flow_span.attributes["sluice.state.type"] == "COMPLETED"  # it returned a value
    assert flow_span.status.is_ok


# --- one trace across the services ----------------------------------------------------------
async def _until_idle(runner: Runner) -> None:
    while True:
        if not runner.in_progress:
            return
        await anyio.sleep(0.02)


def file_spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hex_id(value: int, width: int) -> str:
    return f"0x{value:0{width}x}"


@pytest.mark.anyio
async def test_one_trace_spans_client_orchestrator_runner_engine_and_tasks(
    spans: InMemorySpanExporter,
    client: Client,
    nc: NATS,
    settings: Settings,
    unique: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "traced_flow.py").write_text(FLOW_FILE)
    deployment = await client.register_deployment(
        RegisterDeployment(
            name=f"t-{unique}",
            flow_name="traced",
            entrypoint="traced_flow.py:traced",
            path=str(tmp_path),
            queue=f"q-{unique}",
        )
    )
    run = await client.create_flow_run(deployment.full_name)

    subject = names.dispatch_subject(run.queue, deployment.id)
    offer = await nc.jetstream().get_last_msg(names.DISPATCH_STREAM, subject)
    assert offer.headers is not None and "traceparent" in offer.headers

    # A real runner takes the dispatch message and starts the engine's process,
    # which writes its spans to a file.
    out = tmp_path / "engine-spans.jsonl"
    flow_runner = SubprocessFlowRunner(
        env={
            "OTEL_TRACES_EXPORTER": "sluice-file",
            "SLUICE_OTEL_FILE": str(out),
            "SLUICE_NATS_URL": settings.nats_url,
        }
    )
    runner = Runner(
        name=f"trace-{unique}", settings=settings, queue=run.queue, flow_runner=flow_runner
    )
    with anyio.fail_after(ENGINE_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.astart)
            final = await client.wait_for_flow_run(run.id)
            await _until_idle(runner)  # its process writes its last spans on the way out
            await runner.astop()
    assert final.state.type is StateType.COMPLETED and final.state.data == 10, final.state

    here = spans.get_finished_spans()
    there = file_spans(out)
    trace_id = next(s for s in here if s.name == "send flowrun.create").context.trace_id

    # This process: the client's request, the orchestrator serving it, the dispatch
    # publish, the runner taking it, and the orchestrator serving the engine's proposals.
    def one(name: str) -> Any:
        matching = [s for s in here if s.name == name and s.context.trace_id == trace_id]
        assert len(matching) == 1, (name, [s.name for s in here])
        return matching[0]

    create = one("send flowrun.create")
    served = one("process flowrun.create")
    dispatch = one("send flowrun.dispatch.{queue}.{deployment_id}")
    submit = one("submit flowrun.dispatch.{queue}.{deployment_id}")
    assert create.kind is SpanKind.CLIENT and served.kind is SpanKind.SERVER
    assert dispatch.kind is SpanKind.PRODUCER and submit.kind is SpanKind.CONSUMER
    assert served.parent is not None and served.parent.span_id == create.context.span_id
    assert dispatch.parent is not None and dispatch.parent.span_id == served.context.span_id
    assert submit.parent is not None and submit.parent.span_id == dispatch.context.span_id
    assert create.attributes is not None and served.attributes is not None
    assert create.attributes["messaging.system"] == "nats"
    assert create.attributes["messaging.destination.name"] == "flowrun.create"
    assert served.attributes["messaging.destination.name"] == "flowrun.create"
    assert served.attributes["messaging.consumer.group.name"] == names.ORCHESTRATOR_QUEUE
    assert dispatch.attributes is not None
    assert dispatch.attributes["messaging.destination.name"] == subject
    assert dispatch.attributes["sluice.flow_run.id"] == run.id
    template = names.dispatch_subject("{queue}", "{deployment_id}")
    assert dispatch.attributes["messaging.destination.template"] == template
    assert submit.attributes is not None
    assert submit.attributes["messaging.destination.template"] == template
    proposals_served = [
        s
        for s in here
        if s.name == "process flowrun.state.propose" and s.context.trace_id == trace_id
    ]
    assert len(proposals_served) >= 3  # PENDING claim, RUNNING, COMPLETED

    # The engine process: its spans are in the same trace, under the runner's span.
    want = hex_id(trace_id, 32)
    assert there and {s["context"]["trace_id"] for s in there} == {want}
    assert {s["resource"]["attributes"]["service.name"] for s in there} == {"sluice-engine"}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in there:
        by_name.setdefault(s["name"], []).append(s)
    (execute,) = by_name["execute flow run"]
    (flow_span,) = by_name["flow traced"]
    assert execute["parent_id"] == hex_id(submit.context.span_id, 16)
    assert flow_span["parent_id"] == execute["context"]["span_id"]
    assert flow_span["attributes"]["sluice.flow_run.id"] == run.id
    assert flow_span["attributes"]["sluice.state.type"] == "COMPLETED"
    task_spans = by_name["task double"] + by_name["task add"]
    assert len(task_spans) == 3
    for span in task_spans:
        assert span["parent_id"] == flow_span["context"]["span_id"]
        assert span["attributes"]["sluice.state.type"] == "COMPLETED"
    requests = by_name["send flowrun.state.propose"]
    assert all(r["attributes"]["messaging.system"] == "nats" for r in requests)
    assert all(r["kind"] == "SpanKind.CLIENT" for r in requests)
    # Each proposal the orchestrator served is the child of one the engine sent,
    # or of the runner's claim, sent inside its submit span.
    (claim,) = [
        s
        for s in here
        if s.name == "send flowrun.state.propose"
        and s.parent is not None
        and s.parent.span_id == submit.context.span_id
    ]
    sent = {r["context"]["span_id"] for r in requests} | {hex_id(claim.context.span_id, 16)}
    for served_proposal in proposals_served:
        assert served_proposal.parent is not None
        assert hex_id(served_proposal.parent.span_id, 16) in sent


@pytest.mark.anyio
async def test_a_request_with_a_malformed_traceparent_is_served_in_a_trace_of_its_own(
    spans: InMemorySpanExporter, client: Client, nc: NATS
) -> None:
    reply = await nc.request(
        names.FLOWRUN_READ,
        b'{"id": "00000000-0000-4000-8000-000000000000"}',
        timeout=10,
        headers={"traceparent": "00-not-a-trace-context", "tracestate": "?"},
    )
    assert b"flow_run_not_found" in reply.data
    (served,) = [s for s in spans.get_finished_spans() if s.name == f"process {names.FLOWRUN_READ}"]
    assert served.parent is None
    assert not served.status.is_ok and served.attributes is not None
    assert served.attributes["error.type"] == "flow_run_not_found"
