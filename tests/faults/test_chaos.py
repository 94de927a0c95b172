"""Chaos under a concurrency limit: stalls longer than the lease, and a cancel
made while the watcher is dead, against a stream of runs whose bodies keep a
journal (the ground truth the checker judges, ``tests.faults._bodies``).

The stack: two orchestrators, one cancellation-watcher, three runners of
limit 2 serving one deployment of limit 2 (leases of 1 s: heartbeats every
0.5 s). Each round fires, one after the other:

* ``nats-stop``: nats-server SIGSTOPped for 2.5 s;
* ``runner-stop``: a runner holding a Running run SIGSTOPped for 3 s;
* ``orchestrator-stop``: one of the two orchestrators SIGSTOPped for 3 s;
* ``watcher-kill``: the watcher SIGKILLed, a Running run cancelled, the
  watcher started again 2 s later.

Recovery of a fault is the time from its start to the first body that
finishes after it healed (from the journal). Two rounds by default (about a
minute); ``SLUICE_SOAK=1`` runs 10 (or ``SLUICE_CHAOS_ROUNDS``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from random import Random

import anyio
import pytest

from engine.client import Client
from services.dev import NatsServer
from shared.errors import SluiceError
from shared.settings import Settings
from shared.states import StateType

from ._bodies import read_journal
from ._history import History
from ._load import Driver
from ._stack import Proc, Stack, retry, verify, wait_heartbeat
from .test_runner_faults import register

pytestmark = pytest.mark.anyio

SOAK = os.environ.get("SLUICE_SOAK", "") not in ("", "0")
ROUNDS = int(os.environ.get("SLUICE_CHAOS_ROUNDS", "10" if SOAK else "2"))
LIMIT = 2


class Chaos:
    def __init__(self, stack: Stack, client: Client, nats: NatsServer, journal: Path) -> None:
        self.stack, self.client, self.nats, self.journal = stack, client, nats, journal
        self.recovery: dict[str, list[float]] = defaultdict(list)
        self.cancelled: list[str] = []

    async def fault(self, kind: str, act: Callable[[], Awaitable[None]]) -> None:
        began = time.time()
        await act()
        healed = time.time()
        first = await self.first_end_after(healed)
        self.recovery[kind].append(first - began)
        print(f"{kind}: healed after {healed - began:.1f}s, recovered after {first - began:.1f}s")

    async def first_end_after(self, t: float) -> float:
        """When the first body that ended after ``t`` ended (wall clock, journal)."""
        with anyio.fail_after(120):
            while True:
                ends = [b.last for b in read_journal(self.journal) if b.ended and b.last > t]
                if ends:
                    return min(ends)
                await anyio.sleep(0.1)

    async def stopped(self, pid: int, seconds: float) -> None:
        os.kill(pid, signal.SIGSTOP)
        try:
            await anyio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    async def running(self, runner: str | None = None) -> str:
        """A run Running now (on ``runner``), from the runs listed by the stack."""
        with anyio.fail_after(120):
            while True:
                with contextlib.suppress(SluiceError):
                    page = await self.client.list_flow_runs(states=["RUNNING"], limit=50)
                    for run in page.flow_runs:
                        if runner is None or run.runner == runner:
                            return run.id
                await anyio.sleep(0.1)

    async def runner_with_a_run(self, runners: dict[str, Proc]) -> Proc:
        with anyio.fail_after(120):
            while True:
                with contextlib.suppress(SluiceError):
                    page = await self.client.list_flow_runs(states=["RUNNING"], limit=50)
                    for run in page.flow_runs:
                        if run.runner in runners:
                            return runners[run.runner]
                await anyio.sleep(0.1)

    async def kill_watcher_and_cancel(self, watcher: Proc) -> None:
        watcher.kill()
        run_id = await self.running()
        with contextlib.suppress(SluiceError):  # it may have just ended: still a fault
            await retry(lambda: self.client.cancel_flow_run(run_id, reason="chaos"))
            self.cancelled.append(run_id)
        await anyio.sleep(2.0)
        watcher.start()


async def feed(driver: Driver, journal: Path, rng: Random, stop: anyio.Event) -> list[str]:
    ids: list[str] = []
    n = 0
    while not stop.is_set():
        # Half short, half long enough to outlast a fault's detection (a body
        # that outlives its claim would show in the journal).
        seconds = rng.uniform(0.2, 1.0) if rng.random() < 0.5 else rng.uniform(2.0, 4.0)
        run = await driver.create(f"c{n}", sleep=round(seconds, 2), journal=str(journal))
        ids.append(run.id)
        n += 1
        await anyio.sleep(0.9)  # about what two slots get through: the queue stays short
    return ids


@pytest.mark.timeout(600 + 600 * ROUNDS)
async def test_stalls_longer_than_the_lease_and_a_dead_watcher_under_a_limit(
    stack: Stack,
    fast: Settings,
    history: History,
    own_nats: NatsServer,
    tmp_path: Path,
    rng: Random,
    seed: int,
) -> None:
    journal = tmp_path / "journal"
    orchestrators = [await stack.orchestrator(f"orchestrator-{i}") for i in (1, 2)]
    watcher = stack.service("services.cancellation_watcher")
    async with Client(fast) as c:
        dep = await register(c, "chaos", limit=LIMIT)
        runners = {f"r{i}": stack.runner(f"r{i}", dep, limit=2) for i in range(3)}
        for name, proc in runners.items():
            await wait_heartbeat(fast, name, proc)
        chaos = Chaos(stack, c, own_nats, journal)
        driver = Driver(c, history, "chaos/d")
        stop = anyio.Event()
        ids: list[str] = []

        async def load() -> None:
            ids.extend(await feed(driver, journal, rng, stop))

        assert own_nats.process is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(load)
            nats_pid = own_nats.process.pid
            for _ in range(ROUNDS):
                await chaos.running()
                await chaos.fault("nats-stop", lambda: chaos.stopped(nats_pid, 2.5))
                victim = (await chaos.runner_with_a_run(runners)).pid
                await chaos.fault("runner-stop", lambda v=victim: chaos.stopped(v, 3.0))
                paused = rng.choice(orchestrators).pid
                await chaos.fault("orchestrator-stop", lambda p=paused: chaos.stopped(p, 3.0))
                await chaos.fault("watcher-kill", lambda: chaos.kill_watcher_and_cancel(watcher))
            stop.set()
        report = await verify(fast, history, [dep], seed=seed, journal=journal, timeout=120)
        finals = [await c.read_flow_run(r) for r in ids]

    bodies = read_journal(journal)
    states = {f.state.type for f in finals}
    assert states <= {StateType.COMPLETED, StateType.CRASHED, StateType.CANCELLED}, states
    assert report.max_bodies[dep] <= LIMIT
    by_id = {f.id: f for f in finals}
    for run_id in chaos.cancelled:  # a cancel made while no watcher ran was carried out
        assert by_id[run_id].state.is_terminal, by_id[run_id].state
    fenced = [f for f in finals if f.state.type is StateType.CRASHED]
    lag = []
    for run in fenced:
        last = max((b.last for b in bodies if b.run_id == run.id), default=None)
        if last is not None:
            lag.append(run.state.timestamp.timestamp() - last)
    counts = ", ".join(f"{s.value} {sum(f.state.type is s for f in finals)}" for s in states)
    recovery = ", ".join(
        f"{kind} x{len(t)}: max {max(t):.1f}s mean {sum(t) / len(t):.1f}s"
        for kind, t in chaos.recovery.items()
    )
    marked = (
        f"max {max(lag):.2f}s mean {sum(lag) / len(lag):.2f}s over {len(lag)} runs"
        if lag
        else "no run was fenced"
    )
    print(
        f"chaos seed {seed}: {len(finals)} runs ({counts}); {len(bodies)} bodies, "
        f"max {report.max_bodies[dep]} at once (limit {LIMIT}); violations 0; "
        f"recovery (fault -> next body done) {recovery}; "
        f"Crashed mark after the body's last line: {marked}"
    )
