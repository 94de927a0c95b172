"""Scheduler: schedule lag under load, and its footprint at idle.

    python -m bench.scheduler            # full run; writes bench/results/scheduler.md
    python -m bench.scheduler --quick    # smoke run (~2 minutes); prints only

Two phases, each on a private nats-server (JetStream, ``sync_interval:
always``) with ``python -m services.orchestrator`` and ``python -m
services.scheduler`` as subprocesses, in real time (no fake clock):

1. **Lag.** N deployments (default 1,000), each with a ``* * * * *`` cron on
   one queue, once with the dispatch lead at 0 s (offer at the due time) and
   once at 2 s (the default). The benchmark plays the runners (2,000 slots,
   up to 64 claims in flight): it takes each dispatch item, holds an early
   one until its time (as the Runner's prefetch does), claims the run
   (PENDING), and completes it 10 s later. For every slot due in the
   measured minutes it records the *schedule lag* — due time to the Pending
   state's timestamp (orchestrator clock, same host) — and the *offer lag* —
   due time to the dispatch item being stored by JetStream (the scheduler's
   own part; negative when stored early). The scheduler runs with a 120 s
   horizon, so it creates ~N runs a minute (due work) instead of N x 60 up
   front; the measured minutes start once its start-up materialization is
   done.
2. **Idle.** D schedules (default 10,000: one daily cron per deployment, at
   times at least two hours away) with default settings (1 h horizon, at
   least 3 runs ahead: 3 x D Scheduled runs). Once the scheduler has created
   them and the event stream is quiet, its CPU time and RSS are read from
   ``/proc`` over an idle window; a scheduler with no schedules is the
   baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import anyio.abc
import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from engine.client import Client
from shared import names, runlog
from shared.codec import decode
from shared.messages import Decision, Dispatch, ProposedState, RegisterDeployment
from shared.models import CronSchedule, DeploymentSchedule
from shared.settings import Settings
from shared.states import StateType

from ._harness import (
    REPO,
    ForeignLoad,
    ServiceProcess,
    backend_options,
    interrupt_on_signals,
    machine_info,
    running_nats_server,
)
from ._proccpu import cpu_seconds
from ._scheduler_report import Idle, Lag, document

DEFAULT_OUTPUT = REPO / "bench" / "results" / "scheduler.md"
QUEUE = "bench-lag"
CLAIMERS = 64
"""Claims (PENDING proposals) in flight at once, as that many runner processes would send."""
SLOTS = 2000
"""Runs held at once (runner slots): enough for every run due in one minute."""
FETCHERS = 16
RUN_SECONDS = 10.0


# --- process figures (Linux /proc) --------------------------------------------------------
def memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def service(module: str, env: dict[str, str], log: Path) -> ServiceProcess:
    proc = ServiceProcess(module, env, log)
    proc.start()
    return proc


async def wait_ready(proc: ServiceProcess, word: str = "ready", timeout: float = 300.0) -> None:
    with anyio.fail_after(timeout):
        while word not in proc.log_path.read_text(errors="replace"):
            proc.check_alive()
            await anyio.sleep(0.1)


async def register(client: Client, requests: list[RegisterDeployment], concurrency: int) -> None:
    todo = iter(requests)

    async def worker() -> None:
        for req in todo:
            await client.register_deployment(req)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


async def quiet_events(client: Client, at_least: int, quiet_for: float, timeout: float) -> float:
    """Wait until the event stream holds ``at_least`` events and stops growing; seconds taken."""
    js = client.nc.jetstream()
    t0 = time.monotonic()
    last, since = -1, time.monotonic()
    with anyio.fail_after(timeout):
        while True:
            seq = (await js.stream_info(runlog.STREAM)).state.last_seq
            if seq != last:
                last, since = seq, time.monotonic()
            elif seq >= at_least and time.monotonic() - since >= quiet_for:
                return since - t0
            await anyio.sleep(0.5)


# --- phase 1: lag -------------------------------------------------------------------------
async def lag_phase(url: str, home: Path, tmp: Path, lag: Lag) -> None:
    settings = Settings(nats_url=url, home=home, request_timeout=30.0)
    env = {"SLUICE_NATS_URL": url, "SLUICE_HOME": str(home)}
    with ExitStack() as procs:
        orch = service("services.orchestrator", env, tmp / f"lag-{lag.lead:g}-orchestrator.log")
        procs.callback(orch.stop)
        await wait_ready(orch)
        async with Client(settings) as client:
            every_minute = [DeploymentSchedule(schedule=CronSchedule(cron="* * * * *"))]
            reqs = [
                RegisterDeployment(
                    name=f"lag-{i:05d}", flow_name="bench", queue=QUEUE, schedules=every_minute
                )
                for i in range(lag.deployments)
            ]
            await register(client, reqs, 32)
            sched = service(
                "services.scheduler",
                {
                    **env,
                    "SLUICE_SCHEDULE_HORIZON_SECONDS": "120",
                    "SLUICE_DISPATCH_LEAD_SECONDS": str(lag.lead),
                },
                tmp / f"lag-{lag.lead:g}-scheduler.log",
            )
            procs.callback(sched.stop)
            await wait_ready(sched)
            assert sched.process is not None
            now = datetime.now(UTC)
            first = (now + timedelta(seconds=140)).replace(second=0, microsecond=0)
            last = first + timedelta(minutes=lag.minutes - 1)
            lag.expected = lag.deployments * lag.minutes
            print(f"  measuring slots {first:%H:%M}..{last:%H:%M} UTC", file=sys.stderr)
            async with anyio.create_task_group() as tg:
                await claimers(client, tg, lag, first, last)
                # CPU over whole minutes: each holds one materialization pass and one due batch.
                await anyio.sleep(max(0.0, (first - datetime.now(UTC)).total_seconds() - 60))
                cpu0, t0 = cpu_seconds(sched.process.pid, reaped=False), time.monotonic()
                end = last + timedelta(seconds=10)
                while datetime.now(UTC) < end and len(lag.pending) < lag.expected:
                    sched.check_alive()
                    await anyio.sleep(0.5)
                lag.cpu = cpu_seconds(sched.process.pid, reaped=False) - cpu0
                lag.window = time.monotonic() - t0
                lag.rss, lag.peak = memory_mib(sched.process.pid)
                tg.cancel_scope.cancel()
            lag.runs_created = (
                await client.nc.jetstream().stream_info(runlog.STREAM)
            ).state.last_seq


async def claimers(
    client: Client, tg: anyio.abc.TaskGroup, lag: Lag, first: datetime, last: datetime
) -> None:
    """Runners stand-ins: claim every offered run (PENDING), then complete it."""
    js = client.nc.jetstream()
    durable = "bench-claimers"
    await js.add_consumer(
        names.DISPATCH_STREAM,
        ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=-1,
            filter_subject=f"{names.DISPATCH_PREFIX}.{QUEUE}.>",
        ),
    )
    sub = await js.pull_subscribe_bind(durable=durable, stream=names.DISPATCH_STREAM)
    finish = anyio.CapacityLimiter(32)

    async def complete(run_id: str, attempt: int) -> None:
        await anyio.sleep(RUN_SECONDS)  # the flow runs a while, as flows do
        async with finish:
            await client.propose_state(
                run_id, ProposedState(type=StateType.COMPLETED), attempt=attempt
            )

    slots = anyio.CapacityLimiter(SLOTS)

    async def take(msg: Msg, token: object) -> None:
        """One runner slot: hold an early offer until its time, claim, record."""
        try:
            item = decode(msg.data, Dispatch)
            stored = msg.metadata.timestamp
            early = (item.scheduled_time - datetime.now(UTC)).total_seconds()
            if early > 0:  # as the Runner's prefetch does: start on time
                await msg.in_progress()
                await anyio.sleep(early)
            async with claiming:
                reply = await client.propose_state(
                    item.flow_run_id,
                    ProposedState(type=StateType.PENDING),
                    runner="bench",
                    attempt=item.attempt,
                )
            await msg.ack()
            if reply.status is not Decision.ACCEPT:
                return
            if first <= item.scheduled_time <= last:
                due = item.scheduled_time
                lag.pending.append((reply.state.timestamp - due).total_seconds())
                if stored is not None:
                    lag.offered.append((stored - due).total_seconds())
            tg.start_soon(complete, item.flow_run_id, reply.attempt)
        finally:
            slots.release_on_behalf_of(token)

    claiming = anyio.CapacityLimiter(CLAIMERS)

    async def fetcher() -> None:
        while True:
            token = object()
            await slots.acquire_on_behalf_of(token)
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except nats.errors.TimeoutError:
                slots.release_on_behalf_of(token)
                continue
            tg.start_soon(take, msgs[0], token)

    for _ in range(FETCHERS):
        tg.start_soon(fetcher)


# --- phase 2: idle ------------------------------------------------------------------------
async def measure(proc: ServiceProcess, seconds: float) -> tuple[float, float, float]:
    assert proc.process is not None
    pid = proc.process.pid
    cpu0 = cpu_seconds(pid, reaped=False)
    await anyio.sleep(seconds)
    proc.check_alive()
    rss, peak = memory_mib(pid)
    return cpu_seconds(pid, reaped=False) - cpu0, rss, peak


async def idle_phase(url: str, home: Path, tmp: Path, idle: Idle) -> None:
    settings = Settings(nats_url=url, home=home, request_timeout=30.0)
    env = {"SLUICE_NATS_URL": url, "SLUICE_HOME": str(home)}
    with ExitStack() as procs:
        orch = service("services.orchestrator", env, tmp / "idle-orchestrator.log")
        procs.callback(orch.stop)
        await wait_ready(orch)
        empty = service("services.scheduler", env, tmp / "idle-empty-scheduler.log")
        with contextlib.ExitStack() as one:
            one.callback(empty.stop)
            await wait_ready(empty)
            idle.base_cpu, idle.base_rss, _ = await measure(empty, min(idle.window, 20.0))
        async with Client(settings) as client:
            hour = datetime.now(UTC).hour
            reqs = [
                RegisterDeployment(
                    name=f"idle-{i:05d}",
                    flow_name="bench",
                    queue="bench-idle",
                    schedules=[
                        DeploymentSchedule(
                            schedule=CronSchedule(cron=f"{i % 60} {(hour + 3 + i % 18) % 24} * * *")
                        )
                    ],
                )
                for i in range(idle.schedules)
            ]
            t0 = time.monotonic()
            await register(client, reqs, 32)
            idle.register_s = time.monotonic() - t0
            sched = service("services.scheduler", env, tmp / "idle-scheduler.log")
            procs.callback(sched.stop)
            base = (await client.nc.jetstream().stream_info(runlog.STREAM)).state.last_seq
            t0 = time.monotonic()
            await wait_ready(sched)
            await quiet_events(client, base + 3 * idle.schedules, 5.0, 1800.0)
            idle.startup_s = time.monotonic() - t0
            idle.runs = (
                await client.nc.jetstream().stream_info(runlog.STREAM)
            ).state.last_seq - base
            idle.cpu, idle.rss, idle.peak = await measure(sched, idle.window)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts, one minute")
    p.add_argument("--deployments", type=int, default=None, help="lag phase (default 1000)")
    p.add_argument("--minutes", type=int, default=None, help="measured minutes (default 3)")
    p.add_argument("--schedules", type=int, default=None, help="idle phase (default 10000)")
    p.add_argument("--idle-seconds", type=float, default=None, help="idle window (default 60)")
    p.add_argument("--output", type=Path, default=None, help="markdown report")
    p.add_argument("--data-dir", type=Path, default=None, help="parent of the temp folder")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    quick = args.quick
    lags = [
        Lag(
            deployments=args.deployments or (100 if quick else 1000),
            minutes=args.minutes or (1 if quick else 3),
            lead=lead,
        )
        for lead in (0.0, 2.0)
    ]
    idle = Idle(
        schedules=args.schedules or (1000 if quick else 10_000),
        window=args.idle_seconds or (10.0 if quick else 60.0),
    )
    output = args.output or (None if quick else DEFAULT_OUTPUT)
    command = shlex.join([str(Path(sys.executable)), "-m", "bench.scheduler", *sys.argv[1:]])
    foreign = ForeignLoad()
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-", dir=args.data_dir))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        machine = machine_info(tmp)
        for lag in lags:
            print(f"phase lag, dispatch lead {lag.lead:g} s", file=sys.stderr)
            with running_nats_server(tmp / f"nats-lag-{lag.lead:g}") as server:
                home = tmp / f"home-lag-{lag.lead:g}"
                anyio.run(lag_phase, server.url, home, tmp, lag, backend_options=backend_options())
        print("phase idle", file=sys.stderr)
        with running_nats_server(tmp / "nats-idle") as server:
            home = tmp / "home-idle"
            anyio.run(idle_phase, server.url, home, tmp, idle, backend_options=backend_options())
    machine["other load on the host"] = foreign.summary()
    text = document(
        lags, idle, machine, command.replace(str(REPO) + "/", ""), slots=SLOTS, claimers=CLAIMERS
    )
    print(text)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
