"""Runner benchmark: dispatch latency and throughput with a fresh process per run.

    python -m bench.runner [--quick]

Starts a private nats-server, ``python -m services.orchestrator`` and
``python -m services.runner`` (limit 8) as separate processes, registers a
deployment of a no-op flow, and measures, from the orchestrator's own
timestamps on each run:

* create -> Running and create -> Completed for single runs on an idle runner;
* 200 runs created at once: total time (first create to last end) and runs/s.

Writes ``bench/results/runner.md``.
"""

from __future__ import annotations

import argparse
import compileall
import tempfile
import time
from pathlib import Path

import anyio

from engine.client import Client
from shared.messages import RegisterDeployment
from shared.settings import Settings

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

RESULTS = REPO / "bench" / "results" / "runner.md"


async def wait_serving(client: Client, runner: ServiceProcess) -> None:
    while True:
        runner.check_alive()
        try:
            await client.list_deployments(limit=1)
            return
        except Exception:
            await anyio.sleep(0.1)


#: Seconds a runner is left alone before a single-run measurement: "idle"
#: means nothing in flight and nothing that just ended, so a runner that
#: prepares ahead (a standby process, a fork-server spare) has done so — as
#: it has whenever runs are not arriving back to back.
IDLE_SETTLE = 0.5


async def single_run(client: Client, deployment: str) -> tuple[float, float]:
    """One run on an idle runner: (create -> Running, create -> Completed) in seconds."""
    await anyio.sleep(IDLE_SETTLE)
    run = await client.create_flow_run(deployment)
    done = await client.wait_for_flow_run(run.id)
    assert done.state.type.value == "COMPLETED", done.state.message
    assert done.start_time and done.end_time
    return (
        (done.start_time - done.created).total_seconds(),
        (done.end_time - done.created).total_seconds(),
    )


async def batch_runs(client: Client, deployment: str, count: int) -> tuple[float, float]:
    """``count`` runs created at once: (first create -> last end in seconds, runs/s)."""
    runs = [await client.create_flow_run(deployment) for _ in range(count)]
    finished = [await client.wait_for_flow_run(r.id) for r in runs]
    assert all(r.state.type.value == "COMPLETED" for r in finished)
    first = min(r.created for r in finished)
    last = max(r.end_time for r in finished if r.end_time)
    total = (last - first).total_seconds()
    return total, count / total


async def measure(settings: Settings, singles: int, batch: int) -> dict[str, list[float]]:
    async with Client(settings, connect_timeout=10) as client:
        await client.register_deployment(
            RegisterDeployment(
                name="bench",
                flow_name="noop",
                entrypoint="bench/_noop_flow.py:noop",
                path=str(REPO),
            )
        )
        # warm-up: the first run pays for cold caches
        await single_run(client, "noop/bench")
        to_running, to_completed = [], []
        for _ in range(singles):
            running, completed = await single_run(client, "noop/bench")
            to_running.append(running)
            to_completed.append(completed)
        total, rate = await batch_runs(client, "noop/bench", batch)
    return {"running": to_running, "completed": to_completed, "batch": [total, rate]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 single runs, a batch of 40")
    parser.add_argument("--fork", action="store_true", help="the runner's fork-server mode")
    args = parser.parse_args()
    singles, batch = (5, 40) if args.quick else (30, 200)
    # As an installed wheel has: bytecode for every module, so a fresh flow-run
    # process does not compile the engine (PYTHONDONTWRITEBYTECODE would make it
    # do so on every start).
    for package in ("engine", "shared", "services"):
        compileall.compile_dir(REPO / package, quiet=1)
    with tempfile.TemporaryDirectory() as tmp, running_nats_server(Path(tmp) / "nats") as server:
        env = {
            "SLUICE_NATS_URL": server.url,
            "SLUICE_HOME": str(Path(tmp) / "home"),
            "SLUICE_LOG_LEVEL": "WARNING",
            "SLUICE_RUNNER_LIMIT": "8",
            "SLUICE_RUNNER_NAME": "bench",
            "SLUICE_RUNNER_FORK": "1" if args.fork else "",
        }
        orchestrator = ServiceProcess("services.orchestrator", env, Path(tmp) / "orch.log")
        runner = ServiceProcess("services.runner", env, Path(tmp) / "runner.log")
        orchestrator.start()
        runner.start()
        settings = Settings(nats_url=server.url, home=Path(tmp) / "home")
        try:
            started = time.perf_counter()
            result = anyio.run(
                _with_wait, settings, runner, singles, batch, backend_options=backend_options()
            )
            elapsed = time.perf_counter() - started
        finally:
            runner.stop()
            orchestrator.stop()
        info = machine_info(Path(tmp))
    report(result, info, singles, batch, elapsed, args.quick, args.fork)


async def _with_wait(
    settings: Settings, runner: ServiceProcess, singles: int, batch: int
) -> dict[str, list[float]]:
    async with Client(settings, connect_timeout=10) as client:
        await wait_serving(client, runner)
    return await measure(settings, singles, batch)


def report(
    result: dict[str, list[float]],
    info: dict[str, str],
    singles: int,
    batch: int,
    elapsed: float,
    quick: bool,
    fork: bool,
) -> None:
    rows = []
    for key, label in (("running", "create -> Running"), ("completed", "create -> Completed")):
        ordered = sorted(result[key])
        rows.append(
            [
                f"{label} (idle runner, {'forked' if fork else 'fresh'} process)",
                str(len(ordered)),
                fmt(percentile(ordered, 50) * 1000),
                fmt(percentile(ordered, 95) * 1000),
                f"{fmt(ordered[0] * 1000)}..{fmt(ordered[-1] * 1000)}",
            ]
        )
    total, rate = result["batch"]
    table = markdown_table(["scenario", "runs", "p50 ms", "p95 ms", "min..max ms"], rows)
    lines = [
        "# Runner benchmark",
        "",
        *(f"- **{k}**: {v}" for k, v in info.items()),
        "",
        f"Command: `.venv/bin/python -m bench.runner{' --quick' if quick else ''}"
        f"{' --fork' if fork else ''}`"
        f" (wall {elapsed:.0f} s)",
        "",
        table,
        "",
        f"**{batch} runs created at once, one runner, limit 8:** {total:.2f} s from the first "
        f"create to the last end = **{rate:.1f} runs/s**.",
        "",
        "Times are the orchestrator's own timestamps (created, start_time, end_time) of each"
        " run. "
        + (
            "Every run is a process of its own, forked by the runner's fork server"
            " (`python -m services.runner --fork`) from a process with the engine imported."
            if fork
            else "Every run is a new `python -m engine` process started by"
            " `python -m services.runner`."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        target = RESULTS.with_name("runner-fork.md") if fork else RESULTS
        target.write_text(text)


if __name__ == "__main__":
    main()
