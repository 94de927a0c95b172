"""Metrics: off and free by default; with a scrape port, Prometheus reads the counts
and latency histograms of real runs (a real orchestrator, runner and processes)."""

from __future__ import annotations

import re
import urllib.request

import pytest

from engine.client import Client
from services.dev import free_port
from services.orchestrator import Orchestrator
from shared import telemetry
from shared.settings import Settings
from shared.states import StateType

from .runner.test_runner import deployment, finished, runner, running


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
        await r.add_deployment(deployment(f"f{unique}", queue=queue))
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
