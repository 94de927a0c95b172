"""Cancellation and crash-detection benchmark.

    python -m bench.cancel [--quick]

Real processes: nats-server, ``services.orchestrator``,
``services.cancellation_watcher`` and ``services.runner``; a flow that sleeps
and honours SIGTERM. Measures

* cancel latency: from the ``flowrun.cancel`` request to the run Cancelled —
  which the runner reports only once the flow-run process has exited;
* crash detection: from SIGKILL of a runner to its running run marked Crashed,
  with the default heartbeat interval (5 s; a runner is lost after two missed).

Writes ``bench/results/cancel.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path

import anyio

from engine.client import Client
from shared.messages import RegisterDeployment
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from ._harness import (
    REPO,
    ServiceProcess,
    backend_options,
    fmt,
    machine_info,
    markdown_table,
    percentile,
    running_nats_server,
)

RESULTS = REPO / "bench" / "results" / "cancel.md"


async def until(client: Client, run_id: str, *types: StateType) -> FlowRun:
    async with contextlib.aclosing(client.watch_flow_run(run_id, resync=0.5)) as runs:
        async for run in runs:
            if run.state.type in types:
                return run
    raise AssertionError("unreachable")


async def cancel_once(client: Client, deployment: str) -> float:
    """Seconds from the cancel request for a Running run to the run Cancelled."""
    run = await client.create_flow_run(deployment)
    await until(client, run.id, StateType.RUNNING)
    started = time.perf_counter()
    await client.cancel_flow_run(run.id)
    await until(client, run.id, StateType.CANCELLED)
    return time.perf_counter() - started


async def measure(settings: Settings, env: dict[str, str], tmp: Path, cancels: int, crashes: int):
    async with Client(settings, connect_timeout=10) as client:
        while True:
            try:
                await client.register_deployment(
                    RegisterDeployment(
                        name="bench",
                        flow_name="sleeper",
                        entrypoint="bench/_noop_flow.py:sleeper",
                        path=str(REPO),
                    )
                )
                break
            except Exception:
                await anyio.sleep(0.1)
        cancel_ms = [await cancel_once(client, "sleeper/bench") * 1000 for _ in range(cancels)]
        crash_s = []
        for i in range(crashes):
            victim = ServiceProcess(
                "services.runner",
                env | {"SLUICE_RUNNER_NAME": f"victim-{i}", "SLUICE_RUNNER_QUEUE": "victims"},
                tmp / f"victim-{i}.log",
            )
            await client.register_deployment(
                RegisterDeployment(
                    name=f"victim-{i}",
                    flow_name="sleeper",
                    entrypoint="bench/_noop_flow.py:sleeper",
                    path=str(REPO),
                    queue="victims",
                )
            )
            victim.start()
            run = await client.create_flow_run(f"sleeper/victim-{i}")
            await until(client, run.id, StateType.RUNNING)
            await anyio.sleep(1.0)  # let it heartbeat with the run held
            assert victim.process is not None
            killed = time.perf_counter()
            os.kill(victim.process.pid, signal.SIGKILL)
            await until(client, run.id, StateType.CRASHED)
            crash_s.append(time.perf_counter() - killed)
            victim.stop()
    return cancel_ms, crash_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 cancels, 1 crash")
    args = parser.parse_args()
    cancels, crashes = (5, 1) if args.quick else (30, 5)
    with (
        tempfile.TemporaryDirectory() as folder,
        running_nats_server(Path(folder) / "nats") as server,
    ):
        tmp = Path(folder)
        env = {
            "SLUICE_NATS_URL": server.url,
            "SLUICE_HOME": str(tmp / "home"),
            "SLUICE_LOG_LEVEL": "WARNING",
        }
        services = [
            ServiceProcess("services.orchestrator", env, tmp / "orch.log"),
            ServiceProcess("services.cancellation_watcher", env, tmp / "watcher.log"),
            ServiceProcess("services.runner", env | {"SLUICE_RUNNER_NAME": "bench"}, tmp / "r.log"),
        ]
        for service in services:
            service.start()
        settings = Settings(nats_url=server.url, home=tmp / "home")
        try:
            cancel_ms, crash_s = anyio.run(
                measure, settings, env, tmp, cancels, crashes, backend_options=backend_options()
            )
        finally:
            for service in reversed(services):
                service.stop()
        info = machine_info(tmp)
    cancel_ms.sort()
    crash_s.sort()
    rows = [
        [
            "cancel request -> process gone, run Cancelled",
            str(len(cancel_ms)),
            f"{fmt(percentile(cancel_ms, 50))} ms",
            f"{fmt(percentile(cancel_ms, 95))} ms",
            f"{fmt(cancel_ms[0])}..{fmt(cancel_ms[-1])} ms",
        ],
        [
            "runner SIGKILL -> its run Crashed (heartbeat 5 s)",
            str(len(crash_s)),
            f"{fmt(percentile(crash_s, 50), 2)} s",
            f"{fmt(percentile(crash_s, 95), 2)} s",
            f"{fmt(crash_s[0], 2)}..{fmt(crash_s[-1], 2)} s",
        ],
    ]
    text = "\n".join(
        [
            "# Cancellation and crash-detection benchmark",
            "",
            *(f"- **{k}**: {v}" for k, v in info.items()),
            "",
            f"Command: `.venv/bin/python -m bench.cancel{' --quick' if args.quick else ''}`",
            "",
            markdown_table(["scenario", "n", "p50", "p95", "min..max"], rows),
            "",
            "Goals: cancel p50 <= 250 ms; crash detection within two heartbeat intervals (10 s).",
        ]
    )
    print(text)
    if not args.quick:
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
