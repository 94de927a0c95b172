"""Orchestrator throughput against the raw JetStream KV put rate, on one machine.

    python -m bench.orchestrator            # full run; writes bench/results/orchestrator.md
    python -m bench.orchestrator --quick    # smoke run in seconds; prints only

One run starts a private nats-server (JetStream, ``sync_interval: always``,
as in production) in a temp folder and measures, with warm-up before timing:

1. raw KV put: nats-py ``kv.put`` of one flow-run document (the JSON the
   orchestrator stores) under fresh keys of a fresh file bucket;
2. the wire floor of a create: what the orchestrator sends per create (KV
   create, which is the run's event, then the dispatch item with
   ``Nats-Msg-Id``, whose ack is not waited for; the deployment comes from
   its watched cache), issued straight from nats-py, so the gap to (3) is
   service overhead;
3. ``flowrun.create`` through a real orchestrator, with and without an
   idempotency key per request;
4. state transitions: PENDING, RUNNING, COMPLETED proposed for fresh runs.

Every scenario runs at each concurrency level (default 1 and 16: asyncio tasks
sharing one NATS connection). With the orchestrator in a subprocess, its CPU
time per operation is reported too (read from /proc over the scenario's
trials, its reference trials included). Its ratio is taken against raw KV put trials at
the same concurrency *run alternately with its own trials*, so a host whose
background load drifts (a shared CI runner, a laptop) skews both sides alike.
The goal (issue 23): create throughput >= 0.4 x raw KV put.

The orchestrator runs as ``python -m services.orchestrator`` in a subprocess by
default (the headline: load generator and service do not share an event
loop); ``--mode in-process`` or ``both`` also serves it from the benchmark's
own loop. ``--profile FILE`` runs the subprocess under cProfile and prints the
top functions (slower; do not quote those numbers as throughput).
"""

from __future__ import annotations

import argparse
import functools
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import anyio
import nats
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from engine.client import Client
from services.orchestrator import Orchestrator
from shared.clock import SystemClock
from shared.codec import encode
from shared.errors import StackUnavailable
from shared.messages import Decision, ProposedState, RegisterDeployment
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import State, StateDetails, StateType

from ._harness import (
    REPO,
    ForeignLoad,
    Measurement,
    Op,
    ServiceProcess,
    backend_options,
    drive,
    interrupt_on_signals,
    machine_info,
    merge,
    running_nats_server,
)
from ._orchestrator_report import (
    Counts,
    Report,
    Row,
    document,
    notes_for,
    print_profile,
)
from ._proccpu import cpu_seconds

DEFAULT_OUTPUT = REPO / "bench" / "results" / "orchestrator.md"
FLOW, DEPLOYMENT = "bench-flow", "bench"


def sample_run() -> FlowRun:
    """A flow run as the orchestrator stores it when created (the raw KV value)."""
    now = SystemClock().now()
    return FlowRun(
        id=str(uuid.uuid4()),
        name="brave-heron",
        flow_name=FLOW,
        deployment_id=str(uuid.uuid4()),
        deployment_name=f"{FLOW}/{DEPLOYMENT}",
        state=State(
            type=StateType.SCHEDULED,
            name="Scheduled",
            timestamp=now,
            details=StateDetails(scheduled_time=now),
        ),
        created=now,
        updated=now,
        expected_start_time=now,
    )


# --- the reference: raw KV puts ------------------------------------------------------------
class RawPut:
    """``kv.put`` of a flow-run document under a fresh key (a uuid, like a run id)."""

    def __init__(self, kv: KeyValue, value: bytes) -> None:
        self._kv = kv
        self.value = value

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str) -> RawPut:
        kv = await js.create_key_value(
            KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, direct=True)
        )
        return cls(kv, encode(sample_run()))

    async def op(self, i: int) -> None:
        await self._kv.put(str(uuid.uuid4()), self.value, validate_keys=False)


async def paired(
    op: Op, ref: RawPut, counts: Counts, *, count: int, concurrency: int, warmup: int
) -> tuple[Measurement, Measurement]:
    """Time ``op`` and raw KV puts in alternating trials; (op's, the puts').

    Alternating makes both sides see the same background load, so their ratio
    holds even when the host is busy with something else for a while.
    """
    c = concurrency
    await drive(ref.op, count=counts.warmup, concurrency=c)
    await drive(op, count=warmup, concurrency=c)
    ops, refs = [], []
    for k in range(counts.repeat):
        refs.append(await drive(ref.op, count=counts.paired_kv, concurrency=c))
        ops.append(await drive(op, count=count, concurrency=c, start=warmup + k * count))
    return merge(ops), merge(refs)


# --- 1 and 2: nats-py straight at JetStream ------------------------------------------
async def raw_phase(url: str, counts: Counts, levels: Sequence[int], report: Report) -> None:
    nc = await nats.connect(url, name="bench-raw")
    try:
        js = nc.jetstream()
        refs = {c: await RawPut.open(js, f"bench_put_c{c}") for c in levels}
        for c, ref in refs.items():
            m = await drive(
                ref.op, count=counts.kv, concurrency=c, warmup=counts.warmup, repeat=counts.repeat
            )
            report.add(Row(f"raw KV put ({len(ref.value)} B)", c, m, "kv"))
        for c, ref in refs.items():
            floor = await _wire_floor(js, c, counts, ref.value)
            m, ref_m = await paired(
                floor, ref, counts, count=counts.floor, concurrency=c, warmup=counts.warmup
            )
            report.add(Row("wire floor of create (no service)", c, m, "floor", ref_m))
    finally:
        await nc.close()


async def _wire_floor(js: JetStreamContext, c: int, counts: Counts, value: bytes) -> Op:
    """What one create costs on the wire, without the service in between."""
    runs = await js.create_key_value(
        KeyValueConfig(bucket=f"bench_runs_c{c}", history=1, storage=StorageType.FILE, direct=True)
    )
    dispatch = f"BENCH_DISPATCH_C{c}"
    await js.add_stream(
        StreamConfig(
            name=dispatch,
            subjects=[f"bench.c{c}.dispatch.>"],
            storage=StorageType.FILE,
            duplicate_window=120.0,
        )
    )

    async def create(i: int) -> None:
        run_id = str(uuid.uuid4())
        await runs.create(run_id, value, validate_keys=False)  # the write is the event
        # The dispatch item follows; its ack is not waited for (nor is the orchestrator's).
        await js.publish_async(
            f"bench.c{c}.dispatch.default.x",
            value[:200],
            stream=dispatch,
            headers={"Nats-Msg-Id": f"dispatch:{run_id}:0"},
        )

    return create


# --- 3 and 4: through the orchestrator -------------------------------------------------
async def wait_until_serving(
    client: Client, alive: Callable[[], None], timeout: float = 60.0
) -> None:
    """Register the benchmark deployment as soon as the orchestrator answers."""
    deadline = time.monotonic() + timeout
    while True:
        alive()
        try:
            await client.register_deployment(RegisterDeployment(name=DEPLOYMENT, flow_name=FLOW))
            return
        except StackUnavailable:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.05)


async def orchestrator_phase(
    settings: Settings,
    counts: Counts,
    levels: Sequence[int],
    report: Report,
    *,
    label: str,
    alive: Callable[[], None],
    in_process: bool,
    cpu: Callable[[], float] | None = None,
) -> None:
    """``cpu``: the orchestrator's CPU seconds so far (a subprocess), for CPU per op."""

    def cpu_ms(since: float | None, ops: int) -> float | None:
        return (cpu() - since) * 1000 / ops if cpu is not None and since is not None else None

    async with AsyncExitStack() as stack:
        if in_process:
            await stack.enter_async_context(Orchestrator(settings, grace=2.0))
        client = await stack.enter_async_context(Client(settings, connect_timeout=10.0))
        await wait_until_serving(client, alive)
        raw_nc = await nats.connect(settings.nats_url, name="bench-reference")
        stack.push_async_callback(raw_nc.close)
        ref_js = raw_nc.jetstream()
        target = f"{FLOW}/{DEPLOYMENT}"

        async def create(i: int) -> None:
            await client.create_flow_run(target)

        for scenario, count, keyed in [
            ("flowrun.create", counts.create, False),
            ("flowrun.create + idempotency_key", counts.idempotent, True),
        ]:
            for c in levels:
                ref = await RawPut.open(ref_js, f"bench_ref_{label}_{len(report.rows)}")
                tag = uuid.uuid4().hex[:8]

                async def create_keyed(i: int, tag: str = tag) -> None:
                    await client.create_flow_run(target, idempotency_key=f"bench-{tag}-{i}")

                since = cpu() if cpu is not None else None
                m, ref_m = await paired(
                    create_keyed if keyed else create,
                    ref,
                    counts,
                    count=count,
                    concurrency=c,
                    warmup=counts.warmup,
                )
                ops = counts.warmup + count * counts.repeat
                report.add(Row(f"{scenario} [{label}]", c, m, "create", ref_m, cpu_ms(since, ops)))

        for c in levels:
            ref = await RawPut.open(ref_js, f"bench_ref_{label}_{len(report.rows)}")
            m, ref_m, per_op = await _transitions(client, target, ref, counts, c, cpu)
            report.add(Row(f"state transition P→R→C [{label}]", c, m, "transition", ref_m, per_op))


async def _transitions(
    client: Client,
    target: str,
    ref: RawPut,
    counts: Counts,
    c: int,
    cpu: Callable[[], float] | None,
) -> tuple[Measurement, Measurement, float | None]:
    """Timed lifecycles, their reference puts, and CPU ms per lifecycle (three proposals)."""
    runs = counts.transition_runs
    warmup = max(1, counts.warmup // 3)
    ids: list[str] = [""] * (warmup + runs * counts.repeat)

    async def make(i: int) -> None:
        ids[i] = (await client.create_flow_run(target)).id

    await drive(make, count=len(ids), concurrency=16)  # untimed set-up

    async def lifecycle(i: int) -> list[float]:
        run_id, lat = ids[i], []
        attempt = None
        for state in (StateType.PENDING, StateType.RUNNING, StateType.COMPLETED):
            t0 = time.perf_counter()
            reply = await client.propose_state(
                run_id, ProposedState(type=state), runner="bench", attempt=attempt
            )
            lat.append(time.perf_counter() - t0)
            if reply.status is not Decision.ACCEPT:
                raise RuntimeError(f"{state} for {run_id}: {reply.status} ({reply.reason})")
            attempt = reply.attempt
        return lat

    since = cpu() if cpu is not None else 0.0
    m, ref_m = await paired(lifecycle, ref, counts, count=runs, concurrency=c, warmup=warmup)
    per_op = (cpu() - since) * 1000 / (warmup + runs * counts.repeat) if cpu else None
    return m, ref_m, per_op


# --- main ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.orchestrator", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run in seconds")
    p.add_argument(
        "--mode",
        choices=["subprocess", "in-process", "both"],
        default="subprocess",
        help="how the orchestrator runs (default: subprocess, the headline)",
    )
    p.add_argument(
        "--concurrency",
        default="1,16",
        help="comma-separated concurrency levels (default: 1,16)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"markdown report (default: {DEFAULT_OUTPUT.relative_to(REPO)}; none with --quick)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="parent of the temp folder for JetStream data (default: the system temp dir)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed trials per scenario and level (default: 3; 1 with --quick)",
    )
    p.add_argument(
        "--profile", type=Path, default=None, help="cProfile the orchestrator subprocess to FILE"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    counts = Counts.for_run(args.quick, args.repeat)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    output = args.output or (None if args.quick else DEFAULT_OUTPUT)
    modes = ["subprocess", "in-process"] if args.mode == "both" else [args.mode]
    command = shlex.join(
        [str(Path(sys.executable)), "-m", "bench.orchestrator", *sys.argv[1:]]
    ).replace(str(REPO) + "/", "")
    report = Report()
    foreign = ForeignLoad()

    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-", dir=args.data_dir))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        machine = machine_info(tmp)
        server = stack.enter_context(running_nats_server(tmp / "nats"))
        print(f"nats-server at {server.url}, data in {tmp}", file=sys.stderr)

        anyio.run(raw_phase, server.url, counts, levels, report, backend_options=backend_options())

        for mode in modes:
            home = tmp / f"home-{mode}"
            settings = Settings(nats_url=server.url, home=home, request_timeout=30.0)
            proc: ServiceProcess | None = None
            alive: Callable[[], None] = lambda: None  # noqa: E731
            cpu: Callable[[], float] | None = None
            if mode == "subprocess":
                proc = ServiceProcess(
                    "services.orchestrator",
                    {"SLUICE_NATS_URL": server.url, "SLUICE_HOME": str(home)},
                    tmp / "orchestrator.log",
                    profile_to=args.profile,
                )
                stack.callback(proc.stop)
                proc.start()
                alive = proc.check_alive
                if proc.process is not None and args.profile is None:
                    cpu = functools.partial(cpu_seconds, proc.process.pid, reaped=False)
            phase = functools.partial(
                orchestrator_phase,
                settings,
                counts,
                levels,
                report,
                label=mode,
                alive=alive,
                in_process=mode == "in-process",
                cpu=cpu,
            )
            try:
                anyio.run(phase, backend_options=backend_options())
            except BaseException:
                if proc is not None:
                    proc.stop()
                    print(f"orchestrator log (tail):\n{proc.log_tail()}", file=sys.stderr)
                raise
            if proc is not None:
                code = proc.stop()
                if code not in (0, None):
                    print(f"orchestrator exited with {code}:\n{proc.log_tail()}", file=sys.stderr)

    if args.profile is not None:
        print_profile(args.profile)

    machine["other load on the host"] = foreign.summary()
    notes = notes_for(counts, levels, modes)
    if args.profile is not None:
        notes.append("the orchestrator ran under cProfile: throughput figures are depressed")
    text = document(report, machine, command, notes)
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
