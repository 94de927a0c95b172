"""Metrics: off and free by default; with a scrape port, Prometheus reads the counts
and latency histograms of real runs (a real orchestrator, runner and processes).

Each test has a nats-server of its own: on the session's, another test's
orchestrator or schedules could add to the counts."""

from __future__ import annotations

import re
import urllib.request

import anyio
import pytest

from engine.client import Client
from services.cancellation_watcher import CancellationWatcher
from services.dev import NatsServer, free_port
from services.orchestrator import Orchestrator
from services.scheduler import Scheduler
from shared import telemetry
from shared.settings import Settings
from shared.states import StateType

from .runner.test_runner import deployment, finished, runner, running


@pytest.fixture
def nats_server(own_server: NatsServer) -> NatsServer:
    """Overrides the session's server for this module's tests: each its own."""
    return own_server


def test_metrics_are_off_unless_asked_for() -> None:
    try:
        assert telemetry.setup_metrics("sluice-test", environ={}) is False
        assert not telemetry.metrics_enabled()
        telemetry.record_run_created("q")  # a no-op, not an error
        telemetry.record_request("flowrun.create", "ok", 0.01)
    finally:
        telemetry.shutdown_metrics()


def test_the_port_comes_from_the_settings_and_a_bad_one_is_refused() -> None:
    assert Settings.from_env({"SLUICE_METRICS_PORT": "9464"}).metrics_port == 9464
    assert Settings.from_env({}).metrics_port is None  # off by default
    with pytest.raises(ValueError, match="SLUICE_METRICS_PORT='not-a-port'"):
        Settings.from_env({"SLUICE_METRICS_PORT": "not-a-port"})


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    try:
        return value(text, name, **labels)
    except AssertionError:
        return None


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels…}`` in a Prometheus text page (labels matched as a subset)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


@pytest.mark.anyio
async def test_a_scrape_after_five_runs_shows_counts_and_latencies(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    port = free_port()
    assert telemetry.setup_metrics("sluice-test", environ={}, port=port)
    try:
        queue = f"m-{unique}"
        r = runner(settings, name=f"metered-{unique}", queue=queue)
        await r.aadd_deployment(deployment(f"f{unique}", queue=queue))
        async with running(r):
            runs = [await client.create_flow_run(f"f{unique}/d") for _ in range(5)]
            done = await finished(client, runs)
        assert {d.state.type for d in done} == {StateType.COMPLETED}
        text = scrape(port)
    finally:
        telemetry.shutdown_metrics()

    assert value(text, "sluice_flow_runs_created_total", queue=queue) == 5
    assert value(text, "sluice_flow_runs_transitions_total", state="COMPLETED") >= 5
    assert value(text, "sluice_flow_runs_transitions_total", state="PENDING") >= 5
    assert value(text, "sluice_flow_run_start_latency_seconds_count", queue=queue) == 5
    assert value(text, "sluice_flow_run_start_latency_seconds_bucket", queue=queue, le="+Inf") == 5
    assert value(text, "sluice_flow_run_start_lag_seconds_count", queue=queue) == 5
    proposals = value(
        text, "sluice_rpc_server_duration_seconds_count", subject="flowrun.state.propose",
        decision="ACCEPT",
    )  # fmt: skip
    assert proposals >= 15  # PENDING, RUNNING and COMPLETED of each run
    assert value(text, "sluice_rpc_server_duration_seconds_count", subject="flowrun.create",
                 decision="ok") >= 5  # fmt: skip


@pytest.mark.anyio
async def test_gauges_show_the_backlog_and_the_slots(
    orchestrator: Orchestrator, client: Client, settings: Settings, unique: str
) -> None:
    """Runs waiting in a queue nobody serves are the backlog; a live runner's
    heartbeats give its slots in use and free; a deployment's limit, its
    concurrency slots held."""
    port = free_port()
    assert telemetry.setup_metrics("sluice-test", environ={}, port=port)
    try:
        served, unserved = f"served-{unique}", f"nobody-{unique}"
        r = runner(settings, name=f"gauged-{unique}", queue=served, limit=3)
        await r.aadd_deployment(deployment(f"f{unique}", queue=served, concurrency_limit=2))
        stranded = await client.register_deployment(
            deployment(f"g{unique}", queue=unserved).to_request()
        )
        async with (
            Scheduler(settings, grace=1.0),
            CancellationWatcher(settings, kill_grace=1.0),
            running(r),
        ):
            for _ in range(3):
                await client.create_flow_run(stranded.full_name)
            long = await client.create_flow_run(f"f{unique}/d", parameters={"sleep": 60})
            text = ""
            with anyio.fail_after(60):
                for _ in range(10_000):
                    text = await anyio.to_thread.run_sync(scrape, port)
                    if (
                        sample(text, "sluice_dispatch_backlog", queue=unserved) == 3
                        and sample(text, "sluice_runner_slots_in_use", runner=r.name) == 1
                        and sample(
                            text, "sluice_deployment_slots_in_use", deployment=f"f{unique}/d"
                        )
                        == 1
                    ):
                        break
                    await anyio.sleep(0.2)
            await client.cancel_flow_run(long.id)
    finally:
        telemetry.shutdown_metrics()
    assert value(text, "sluice_runner_slots_free", runner=r.name) == 2
    assert value(text, "sluice_dispatch_backlog", queue=unserved) == 3
