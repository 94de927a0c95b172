"""Nothing is lost across an orchestrator restart, a lost read model, a crash
between writing a run and offering it to runners, or a killed and restarted nats-server."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import nats
import pytest

from engine.client import Client
from engine.runner import Runner
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from shared import names
from shared.codec import encode
from shared.errors import StackUnavailable
from shared.messages import ProposedState, RegisterDeployment
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import StateType

from ._procs import start_service, wait_until_serving
from ._runs import scheduled_run
from .runner._script import ScriptFlowRunner
from .runner.test_runner import deployment, running

pytestmark = pytest.mark.anyio


async def test_orchestrator_restart_and_lost_read_model(settings: Settings, unique: str) -> None:
    flow = f"f{unique}"
    async with Orchestrator(settings, grace=1), Client(settings) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name=flow))
        created = [await c.create_flow_run(f"{flow}/d") for _ in range(20)]
        await c.propose_state(created[0].id, ProposedState(type=StateType.RUNNING))

    async with Orchestrator(settings, grace=1), Client(settings) as c:
        page = await c.list_flow_runs(flow_name=flow, limit=100)
        assert {r.id for r in page.flow_runs} == {r.id for r in created}
        assert (await c.read_flow_run(created[0].id)).state.type is StateType.RUNNING

    # The read model is a cache: lose it and it is rebuilt from the event stream.
    db = settings.home / "orchestrator" / "runs.sqlite"
    for f in db.parent.glob("runs.sqlite*"):
        f.unlink()
    async with Orchestrator(settings, grace=1), Client(settings) as c:
        page = await c.list_flow_runs(flow_name=flow, limit=100)
        assert {r.id for r in page.flow_runs} == {r.id for r in created}
        running = await c.list_flow_runs(flow_name=flow, states=["RUNNING"])
        assert [r.id for r in running.flow_runs] == [created[0].id]


async def test_a_run_written_but_never_announced_is_recovered(
    settings: Settings, unique: str
) -> None:
    """The orchestrator died after its KV write (the event) and before the dispatch item."""
    flow = f"f{unique}"
    async with Orchestrator(settings, grace=1), Client(settings) as c:
        dep = await c.register_deployment(
            RegisterDeployment(name="d", flow_name=flow, queue=f"q{unique}")
        )
    orphan = scheduled_run(
        flow,
        id="00000000-0000-4000-8000-" + unique.rjust(12, "0"),
        name="orphan",
        deployment_id=dep.id,
        deployment_name=f"{flow}/d",
        queue=f"q{unique}",
    )
    nc = await nats.connect(settings.nats_url)
    try:
        kv = await nc.jetstream().key_value(names.FLOW_RUNS_BUCKET)
        await kv.create(orphan.id, encode(orphan))
        async with Orchestrator(settings, grace=1), Client(settings) as c:
            page = await c.list_flow_runs(flow_name=flow)
            assert [r.id for r in page.flow_runs] == [orphan.id]
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"flowrun.dispatch.q{unique}.>", durable=f"t{unique}")
        msgs = await sub.fetch(5, timeout=5)
        assert [json.loads(m.data)["flow_run_id"] for m in msgs] == [orphan.id]
    finally:
        await nc.close()


async def test_nats_server_killed_and_restarted_under_load(
    own_server: NatsServer, tmp_path: Path
) -> None:
    settings = Settings(nats_url=own_server.url, home=tmp_path / "home", request_timeout=2.0)
    acknowledged: dict[str, str] = {}  # idempotency key -> run id
    quarter_done = anyio.Event()
    async with Orchestrator(settings, grace=1), Client(settings) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name="load"))

        async def create_until_acknowledged(key: str) -> None:
            # A client that got no answer retries with the same idempotency key.
            while True:
                try:
                    run = await c.create_flow_run("load/d", idempotency_key=key)
                except StackUnavailable:
                    await anyio.sleep(0.2)
                    continue
                acknowledged[key] = run.id
                if len(acknowledged) >= 40:
                    quarter_done.set()
                return

        async def load(worker: int) -> None:
            for i in range(40):
                await create_until_acknowledged(f"w{worker}-{i}")

        async with anyio.create_task_group() as tg:
            for w in range(4):
                tg.start_soon(load, w)
            await quarter_done.wait()
            own_server.kill()  # SIGKILL: no goodbye, no flush
            await anyio.to_thread.run_sync(own_server.start)

        assert len(acknowledged) == 160
        # Every acknowledged create survived, exactly once per key.
        assert len(set(acknowledged.values())) == 160
        for run_id in acknowledged.values():
            assert (await c.read_flow_run(run_id)).flow_name == "load"
        # The same orchestrator (never restarted) serves, and its read model caught up.
        page = await c.list_flow_runs(flow_name="load", limit=1000)
        assert {r.id for r in page.flow_runs} == set(acknowledged.values())
        after = await c.create_flow_run("load/d")
        assert after.state.type is StateType.SCHEDULED


async def test_orchestrator_sigkilled_under_load(settings: Settings, tmp_path: Path) -> None:
    """Kill -9 the orchestrator process mid-load; clients retry with their keys."""
    settings = Settings(nats_url=settings.nats_url, home=settings.home, request_timeout=1.0)
    log = tmp_path / "orchestrator.log"
    proc = start_service("services.orchestrator", settings, log)
    acknowledged: dict[str, str] = {}
    progress = anyio.Event()
    try:
        await wait_until_serving(settings, proc)
        async with Client(settings) as c:
            flow = f"k{tmp_path.name[-8:]}"
            await c.register_deployment(RegisterDeployment(name="d", flow_name=flow))

            async def load(worker: int) -> None:
                for i in range(30):
                    key = f"w{worker}-{i}"
                    while key not in acknowledged:
                        try:
                            acknowledged[key] = (
                                await c.create_flow_run(f"{flow}/d", idempotency_key=key)
                            ).id
                            progress.set()
                        except StackUnavailable:
                            await anyio.sleep(0.1)

            async with anyio.create_task_group() as tg:
                for w in range(4):
                    tg.start_soon(load, w)
                for _ in range(3):
                    target = len(acknowledged) + 15
                    while len(acknowledged) < min(target, 120):
                        await progress.wait()
                        progress = anyio.Event()
                    proc.kill()
                    proc.wait()
                    proc = start_service("services.orchestrator", settings, log)

            assert len(acknowledged) == 120
            assert len(set(acknowledged.values())) == 120
            for run_id in acknowledged.values():
                await c.read_flow_run(run_id)
            page = await c.list_flow_runs(flow_name=flow, limit=1000)
            assert {r.id for r in page.flow_runs} == set(acknowledged.values())
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_runner_asks_for_work_again_when_nats_comes_back(
    own_server: NatsServer, tmp_path: Path, unique: str
) -> None:
    """A pull waiting on the server dies with it: the runner asks again at the
    reconnect. Its pulls here would otherwise wait an hour, so a run created
    after the restart completes only if the pull is asked again."""
    settings = Settings(nats_url=own_server.url, home=tmp_path / "home", request_timeout=5.0)
    flow = f"f{unique}"
    async with Orchestrator(settings, grace=1), Client(settings) as c:
        r = Runner(
            settings=settings,
            name=f"r-{unique}",
            query_seconds=3600.0,
            flow_runner=ScriptFlowRunner(),
            kill_grace=2.0,
        )
        await r.aadd_deployment(deployment(flow))
        async with running(r):
            first = await c.create_flow_run(f"{flow}/d")
            with anyio.fail_after(60):
                assert (await c.wait_for_flow_run(first.id)).state.type is StateType.COMPLETED
            own_server.kill()
            await anyio.to_thread.run_sync(own_server.start)
            second: FlowRun | None = None
            with anyio.fail_after(60):
                while second is None:
                    try:
                        second = await c.create_flow_run(f"{flow}/d", idempotency_key=unique)
                    except StackUnavailable:
                        await anyio.sleep(0.1)
                assert (await c.wait_for_flow_run(second.id)).state.type is StateType.COMPLETED


async def test_a_client_closes_quietly_after_its_server_is_gone(tmp_path: Path) -> None:
    """A served flow stopped after its stack went away closes its client: the
    flush that closing does must not raise (it once ended `serve()` with a
    ConnectionResetError traceback)."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    client = Client(Settings(nats_url=server.url, home=tmp_path / "home"), connect_timeout=10)
    await client.__aenter__()
    try:
        server.kill()
        with anyio.fail_after(30):
            while not client.nc.is_reconnecting:  # noqa: ASYNC110 - nats-py has no event for it
                await anyio.sleep(0.05)
        # Bytes buffered for a server that is gone; closing flushes them.
        await client.nc.publish("sluice.test.buffered", b"x" * 100_000)
    finally:
        await client.__aexit__(None, None, None)


FLOW_WAITING_FOR_A_FILE = """
import pathlib, sys, time
from engine import flow

@flow
def waits(path: str) -> str:
    while not pathlib.Path(path).exists():
        time.sleep(0.05)
    return "done"

print(waits(sys.argv[1]), flush=True)
"""


async def test_a_run_waits_out_an_orchestrator_outage_to_report_its_end(
    settings: Settings, tmp_path: Path
) -> None:
    """A flow whose final state finds no orchestrator (a restart, a cluster
    electing leaders) keeps trying instead of failing, and the run completes
    once one is back: the outage must not turn a finished run into a crash."""
    script, go = tmp_path / "flow.py", tmp_path / "go"
    script.write_text(FLOW_WAITING_FOR_A_FILE)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_NATS_URL": settings.nats_url,
        "SLUICE_HOME": str(settings.home),
        "SLUICE_REQUEST_TIMEOUT": "1",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    away = anyio.Event()
    async with Client(settings) as c, anyio.create_task_group() as tg:
        first_gone = anyio.Event()

        async def first(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with Orchestrator(settings, grace=1):
                task_status.started()
                await away.wait()
            first_gone.set()

        await tg.start(first)
        process = await anyio.open_process(
            [sys.executable, str(script), str(go)], env=env, stderr=subprocess.PIPE
        )
        try:
            assert process.stderr is not None
            with anyio.fail_after(60):
                run = await _the_run_of(c, "waits")
                away.set()
                await first_gone.wait()
                go.touch()  # the flow ends while nothing can take its state
                seen = b""
                async for chunk in process.stderr:
                    seen += chunk
                    if b"the stack is unavailable" in seen:
                        break
                async with Orchestrator(settings, grace=1):
                    assert await process.wait() == 0, seen.decode()
                    final = await c.read_flow_run(run.id)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.aclose()
    assert final.state.type is StateType.COMPLETED, final.state.message


async def _the_run_of(c: Client, flow_name: str) -> FlowRun:
    while True:
        page = await c.list_flow_runs(flow_name=flow_name, states=["RUNNING"])
        if page.flow_runs:
            return page.flow_runs[0]
        await anyio.sleep(0.05)
