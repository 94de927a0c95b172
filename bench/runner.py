"""Runner benchmark: dispatch latency and throughput with a fresh process per run.

    python -m bench.runner [--quick]

Starts a private nats-server, ``python -m services.orchestrator`` and
``python -m services.runner`` (limit 8) as separate processes, registers a
deployment of a no-op flow, and measures, from the orchestrator's own
timestamps on each run:

* create -> Running and create -> Completed for single runs on an idle runner;
* 200 runs created at once: total time (first create to last end) and runs/s;
* during that batch, the CPU each part of the stack spent per run (from
  /proc: nats-server, the orchestrator, the runner, the flow-run processes
  with what starts them, this benchmark's client), and so the most runs per
  second this machine's cores could give with those costs.

Writes ``bench/results/runner.md`` (``runner-fork.md`` with ``--fork``).
"""

from __future__ import annotations

import argparse
import compileall
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

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
from ._proccpu import cpu_seconds, own_cpu_seconds, tree_cpu_seconds

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


#: The parts of the stack whose CPU is reported, in order.
CPU_PARTS = (
    "nats-server",
    "orchestrator",
    "runner",
    "flow-run processes and what starts them",
    "benchmark client (creates, waits)",
)


def cpu_sample(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each part; ``pids``: nats-server, orchestrator, runner."""
    runner_own = cpu_seconds(pids["runner"], reaped=False)
    return dict(
        zip(
            CPU_PARTS,
            (
                cpu_seconds(pids["nats-server"]),
                cpu_seconds(pids["orchestrator"]),
                runner_own,
                tree_cpu_seconds([pids["runner"]]) - runner_own,
                own_cpu_seconds(),
            ),
            strict=True,
        )
    )


async def batch_runs(
    client: Client, deployment: str, count: int, pids: dict[str, int] | None = None
) -> tuple[float, float, dict[str, float]]:
    """``count`` runs created at once: (first create -> last end in seconds, runs/s,
    CPU milliseconds per run of each part; empty without ``pids``, as a stack in
    one process, ``sluice dev``, has no parts to tell apart)."""
    before = cpu_sample(pids) if pids else {}
    runs = [await client.create_flow_run(deployment) for _ in range(count)]
    finished = [await client.wait_for_flow_run(r.id) for r in runs]
    after = cpu_sample(pids) if pids else {}
    cpu = {part: (after[part] - before[part]) * 1000 / count for part in after}
    assert all(r.state.type.value == "COMPLETED" for r in finished)
    first = min(r.created for r in finished)
    last = max(r.end_time for r in finished if r.end_time)
    total = (last - first).total_seconds()
    return total, count / total, cpu


async def measure(
    settings: Settings, singles: int, batch: int, pids: dict[str, int]
) -> dict[str, Any]:
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
        total, rate, cpu = await batch_runs(client, "noop/bench", batch, pids)
    return {"running": to_running, "completed": to_completed, "batch": [total, rate], "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 single runs, a batch of 40")
    parser.add_argument("--fork", action="store_true", help="the runner's fork-server mode")
    args = parser.parse_args()
    singles, batch = (5, 40) if args.quick else (30, 200)
    # As an installed wheel has: bytecode for every module, so a fresh flow-run
    # process does not compile the engine (PYTHONDONTWRITEBYTECODE would make it
    # do so on every start) — nor the flow's own file, whose bytecode Python
    # caches on its first import unless that variable is set.
    for package in ("engine", "shared", "services", "bench"):
        # Not into bench/.prefect-venv: Prefect's own packages are no part of a run.
        compileall.compile_dir(REPO / package, quiet=1, rx=re.compile(r"[/\\]\.prefect-venv[/\\]"))
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
        assert server.process and orchestrator.process and runner.process
        pids = {
            "nats-server": server.process.pid,
            "orchestrator": orchestrator.process.pid,
            "runner": runner.process.pid,
        }
        try:
            started = time.perf_counter()
            result = anyio.run(
                _with_wait,
                settings,
                runner,
                singles,
                batch,
                pids,
                backend_options=backend_options(),
            )
            elapsed = time.perf_counter() - started
        finally:
            runner.stop()
            orchestrator.stop()
        info = machine_info(Path(tmp))
    report(result, info, singles, batch, elapsed, args.quick, args.fork)


async def _with_wait(
    settings: Settings, runner: ServiceProcess, singles: int, batch: int, pids: dict[str, int]
) -> dict[str, Any]:
    async with Client(settings, connect_timeout=10) as client:
        await wait_serving(client, runner)
    return await measure(settings, singles, batch, pids)


def cpu_table(cpu: dict[str, float]) -> tuple[str, float]:
    """The per-run CPU table and the runs/s the machine's cores allow at that cost."""
    total = sum(cpu.values())
    rows = [[part, fmt(cpu[part], 2), f"{cpu[part] / total:.0%}"] for part in CPU_PARTS]
    rows.append(["**all**", f"**{fmt(total, 2)}**", "100%"])
    cores = os.cpu_count() or 1
    return markdown_table(["part", "CPU ms per run", "share"], rows), cores * 1000 / total


def report(
    result: dict[str, Any],
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
    cpu, ceiling = cpu_table(result["cpu"])
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
        "CPU spent per run during that batch, by part (from /proc; a process's reaped"
        " children count with it):",
        "",
        cpu,
        "",
        f"At that cost, the machine's {os.cpu_count()} cores allow at most"
        f" **{ceiling:.0f} runs/s**.",
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
