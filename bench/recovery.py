"""``python -m bench.recovery``: how fast the stack recovers from two faults.

1. **nats-server killed** (SIGKILL) and started again at once, on the same port
   and store: the time from the kill to the next run being Completed. The run
   is created right after the kill (the create is retried with its idempotency
   key until the server is back), so the time covers the server's restart, the
   services' reconnects, the runner's new pull, the claim and the run itself.
   ``--kills`` times; median and max.
2. **One of two orchestrators paused** (SIGSTOP): the latency of ``--creates``
   sequential creates with an idempotency key (which clients re-send while
   unanswered), and, for comparison, of creates without one (sent once).

Processes: nats-server (the embedded configuration, ``sync_interval:
always``), two orchestrators, a scheduler and a runner serving the default
queue, each ``python -m services.<name>``. Results are printed and written to
``bench/results/recovery.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio

from engine.client import Client
from services.dev import NatsServer
from shared.errors import SluiceError, StackUnavailable
from shared.messages import RegisterDeployment
from shared.settings import Settings
from shared.states import StateType

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "recovery.md"
DEPLOYMENT = "noop/recovery"


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nats = NatsServer(tmp / "nats")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def settings(self) -> Settings:
        return Settings(nats_url=self.nats.url, home=self.tmp / "client", request_timeout=10)

    def service(self, key: str, module: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "OTEL_"))}
        env.update(
            SLUICE_NATS_URL=self.nats.url,
            SLUICE_HOME=str(self.tmp / key),
            SLUICE_LOG_LEVEL="WARNING",
        )
        with (self.tmp / f"{key}.log").open("ab") as log:
            self.procs[key] = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start(self) -> None:
        self.nats.start()
        self.service("orchestrator-1", "services.orchestrator")
        self.service("orchestrator-2", "services.orchestrator")
        self.service("scheduler", "services.scheduler")
        self.service("runner", "services.runner", "--queue", "default", "--limit", "4")

    def kill_nats(self) -> float:
        """SIGKILL nats-server; the monotonic time of the kill."""
        assert self.nats.process is not None
        at = time.monotonic()
        self.nats.process.kill()
        self.nats.process.wait()
        return at

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.nats.process is not None and self.nats.process.poll() is None:
            self.nats.stop()


async def _create(client: Client, key: str | None) -> str:
    """Create a run, retrying (with its key) while the stack is unavailable."""
    while True:
        try:
            run = await client.create_flow_run(DEPLOYMENT, idempotency_key=key)
            return run.id
        except StackUnavailable:
            if key is None:
                raise
            await anyio.sleep(0.02)


async def _completed(client: Client, run_id: str) -> None:
    with anyio.fail_after(120):
        while True:
            try:
                run = await client.read_flow_run(run_id)
            except SluiceError:
                run = None
            if run is not None and run.state.type is StateType.COMPLETED:
                return
            if run is not None and run.state.is_terminal:
                raise RuntimeError(f"run {run_id} ended {run.state.describe()}")
            await anyio.sleep(0.02)


async def _ready(stack: Stack) -> None:
    with anyio.fail_after(120):
        while True:
            try:
                async with Client(stack.settings, connect_timeout=2) as c:
                    await c.register_deployment(
                        RegisterDeployment(
                            name="recovery",
                            flow_name="noop",
                            entrypoint="bench/_noop_flow.py:noop",
                            path=str(REPO),
                        )
                    )
                    await _completed(c, await _create(c, f"warm-{uuid.uuid4()}"))
                    return
            except SluiceError:
                await anyio.sleep(0.2)


async def nats_kills(stack: Stack, kills: int) -> list[float]:
    times: list[float] = []
    for _ in range(kills):
        async with Client(stack.settings, connect_timeout=10) as client:
            await _completed(client, await _create(client, f"before-{uuid.uuid4()}"))
            killed = stack.kill_nats()
            await anyio.to_thread.run_sync(stack.nats.start)
            run_id = await _create(client, f"after-{uuid.uuid4()}")
            await _completed(client, run_id)
            times.append(time.monotonic() - killed)
            print(f"  nats-server kill -> next run Completed: {times[-1]:.2f}s", flush=True)
    return times


async def paused_runner_runs(stack: Stack, runs: int) -> list[float]:
    """Create → Completed, one run at a time, with one of two runners stopped."""
    times: list[float] = []
    async with Client(stack.settings, connect_timeout=10) as client:
        for _ in range(runs):
            start = time.monotonic()
            await _completed(client, await _create(client, f"stopped-runner-{uuid.uuid4()}"))
            times.append(time.monotonic() - start)
    return times


async def paused_creates(stack: Stack, creates: int, keyed: bool) -> list[float]:
    latencies: list[float] = []
    async with Client(stack.settings, connect_timeout=10) as client:
        for _ in range(creates):
            key = f"paused-{uuid.uuid4()}" if keyed else None
            start = time.monotonic()
            # A time-out counts too: it is what the caller waited.
            with contextlib.suppress(StackUnavailable):
                await client.create_flow_run(DEPLOYMENT, idempotency_key=key, tags=["paused"])
            latencies.append(time.monotonic() - start)
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--keyless", type=int, default=20, help="creates without a key")
    parser.add_argument("--runs", type=int, default=20, help="runs with one runner stopped")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder and logs")
    args = parser.parse_args()
    # SIGTERM (a time-out wrapper) still stops the stack this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    keep = args.keep
    with contextlib.ExitStack() as cleanup:
        folder = tempfile.mkdtemp(prefix="sluice-recovery-")
        if not keep:
            cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        stack = Stack(Path(folder))
        try:
            stack.start()
            anyio.run(_ready, stack)
            print(f"nats-server SIGKILL and restart, {args.kills} times:", flush=True)
            kills = anyio.run(nats_kills, stack, args.kills)
            anyio.run(_ready, stack)
            os.kill(stack.procs["orchestrator-2"].pid, signal.SIGSTOP)
            print("one of two orchestrators SIGSTOPped: creates with and without a key")
            keyed = anyio.run(paused_creates, stack, args.creates, True)
            keyless = anyio.run(paused_creates, stack, args.keyless, False)
            os.kill(stack.procs["orchestrator-2"].pid, signal.SIGCONT)
            stack.service("runner-2", "services.runner", "--queue", "default", "--limit", "4")
            anyio.run(_ready, stack)
            os.kill(stack.procs["runner"].pid, signal.SIGSTOP)
            print(f"one of two runners SIGSTOPped; {args.runs} runs one after another:")
            stopped = anyio.run(paused_runner_runs, stack, args.runs)
            os.kill(stack.procs["runner"].pid, signal.SIGCONT)
            slow = [i for i, t in enumerate(keyed) if t > 1.0]
            print(f"keyed creates over 1 s: {[(i, round(keyed[i], 2)) for i in slow]}")
            server_log = stack.nats.log_path.read_text(errors="replace").splitlines()
            for line in server_log:
                if "Slow Consumer" in line or "Write" in line:
                    print("nats-server:", line)
        finally:
            stack.stop()
    lines = [
        "# Recovery (`python -m bench.recovery`)",
        "",
        f"Machine: {os.cpu_count()} CPUs, shared. Stack: nats-server, 2 orchestrators, "
        "a scheduler, 1 runner (subprocess runs of a no-op flow).",
        "",
        "| measurement | n | median | p99 | max |",
        "|---|---|---|---|---|",
        f"| nats-server SIGKILL → next run Completed | {len(kills)} | "
        f"{statistics.median(kills):.2f} s | — | {max(kills):.2f} s |",
        f"| create with a key, 1 of 2 orchestrators SIGSTOPped | {len(keyed)} | "
        f"{statistics.median(keyed):.3f} s | {_pct(keyed, 0.99):.3f} s | {max(keyed):.3f} s |",
        f"| create without a key (sent once), same | {len(keyless)} | "
        f"{statistics.median(keyless):.3f} s | {_pct(keyless, 0.99):.3f} s | "
        f"{max(keyless):.3f} s |",
        f"| create → Completed, 1 of 2 runners SIGSTOPped | {len(stopped)} | "
        f"{statistics.median(stopped):.2f} s | {_pct(stopped, 0.99):.2f} s | "
        f"{max(stopped):.2f} s |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
