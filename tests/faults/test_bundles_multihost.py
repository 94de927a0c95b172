"""Runners on other machines get the code: bundles over a 3-node NATS cluster.

Two runner processes, each with a home of its own and no path to the flow's
code (it exists only in the bundle the client stored), serve one queue of a
3-node JetStream cluster with R3 storage. Runs complete on both; a new version
of the code is picked up by the next run; a bundle whose requirements cannot
be installed crashes its run with pip's message; and one NATS node killed mid-load
loses no run.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from pathlib import Path

import anyio
import pytest

from engine.client import Client
from engine.deployments import RunnerDeployment
from services.dev import NatsServer
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import TERMINAL_TYPES, StateType

from ._stack import Proc, Stack, retry, wait_heartbeat
from .test_storage_faults import cluster, wait_for_jetstream

__all__ = ["cluster"]  # a fixture, used by name

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(400)]

FLOW = """
from engine import flow
from helper import answer


@flow(name="{name}")
def shipped(i: int = 0) -> str:
    return answer()
"""


def _project(folder: Path, name: str, answer: str, requirements: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flows.py").write_text(FLOW.format(name=name))
    (folder / "helper.py").write_text(f"def answer() -> str:\n    return {answer!r}\n")
    if requirements is not None:
        (folder / "requirements.txt").write_text(requirements)
    return folder


async def _runs(c: Client, deployment: str, count: int) -> list[FlowRun]:
    """``count`` runs of ``deployment``, to their ends. A cluster's streams may be
    electing leaders (just started, or a node lost): creates carry idempotency
    keys, so the client may send them again, and are retried while unanswered."""
    batch = uuid.uuid4().hex[:8]
    created = [
        await retry(
            lambda i=i: c.create_flow_run(
                deployment, parameters={"i": i}, idempotency_key=f"{batch}-{i}"
            )
        )
        for i in range(count)
    ]
    return await _ended(c, created, 180)


async def _ended(c: Client, created: list[FlowRun], timeout: float) -> list[FlowRun]:
    """``created`` at their ends; after ``timeout`` s, fails naming each run that
    has not ended and the states its record holds."""
    try:
        with anyio.fail_after(timeout):
            return [await retry(lambda r=r: c.wait_for_flow_run(r.id)) for r in created]
    except TimeoutError:
        stuck = []
        for r in created:
            run = await retry(lambda r=r: c.read_flow_run(r.id))
            if run.state.type not in TERMINAL_TYPES:
                states = [p.state.type.value for p in run.history]
                stuck.append(f"{run.id} {run.state.describe()} (runner {run.runner}; {states})")
        raise AssertionError(f"runs not ended after {timeout} s: {stuck}") from None


async def test_two_runners_with_no_copy_of_the_code_run_bundles_over_a_cluster(
    cluster: list[NatsServer], tmp_path: Path
) -> None:
    url = ",".join(n.url for n in cluster)
    settings = Settings(nats_url=url, home=tmp_path / "client-home", replicas=3)
    await wait_for_jetstream(cluster[0].url)
    logs = tmp_path / "logs"
    logs.mkdir()
    # What docs/multi-host.md tells cluster operators to set. A stream whose
    # leader was on the lost node is unavailable until its Raft group elects
    # another (nats-server waits 4-9 s), so leases must outlast that: with the
    # fault tests' 2 s lease, or even the single-server default of 10 s, a
    # runner rightly stops runs whose lease it cannot renew.
    env = {
        "SLUICE_REPLICAS": "3",
        "SLUICE_NATS_URL": url,
        "SLUICE_REQUEST_TIMEOUT": "10",
        "SLUICE_HEARTBEAT_INTERVAL": "10",
        "SLUICE_SLOT_LEASE": "30",
    }
    stack = Stack(settings, logs, env=env)
    try:
        await stack.orchestrator()
        for name in ("host-a", "host-b"):
            home = tmp_path / name  # nothing else on this "host" but its own home
            env = stack.env | {"SLUICE_HOME": str(home), "SLUICE_RUNNER_NAME": name}
            args = ["-m", "services.runner", "--queue", "default", "--limit", "3"]
            args.append("--install-requirements")
            proc = Proc([sys.executable, *args], env, logs / f"{name}.log").start()
            stack.procs.append(proc)
            await wait_heartbeat(Settings(nats_url=cluster[0].url), name, proc)

        flow_name = "shipped"
        project = _project(tmp_path / "client" / "project", flow_name, "v1")
        deployment = RunnerDeployment(
            name="d",
            flow_name=flow_name,
            entrypoint="flows.py:shipped",
            path=str(project),
            bundle=True,
        )
        async with Client(settings, connect_timeout=10) as c:
            await retry(lambda: deployment.register(c))

            done = await _runs(c, "shipped/d", 12)
            assert {r.state.type for r in done} == {StateType.COMPLETED}, [
                r.state.message for r in done
            ]
            assert {r.state.data for r in done} == {"v1"}
            by_runner = Counter(r.runner for r in done)
            assert set(by_runner) == {"host-a", "host-b"}, by_runner

            # A new version of the code: the next run runs it.
            _project(project, flow_name, "v2")
            await deployment.register(c)
            (newer,) = await _runs(c, "shipped/d", 1)
            assert newer.state.data == "v2", newer.state.message

            # Requirements that cannot be installed: the run crashes with pip's words.
            broken_dir = _project(
                tmp_path / "client" / "broken", "broken", "x", "--no-index\nno-such-dist-xyz==1\n"
            )
            broken = RunnerDeployment(
                name="d",
                flow_name="broken",
                entrypoint="flows.py:shipped",
                path=str(broken_dir),
                bundle=True,
            )
            await broken.register(c)
            (crashed,) = await _runs(c, "broken/d", 1)
            assert crashed.state.type is StateType.CRASHED
            assert "no-such-dist-xyz" in (crashed.state.message or ""), crashed.state.message

            # One NATS node killed mid-load: every run completes (a run's process
            # waits out the election instead of failing its run), and the cluster
            # of two goes on running new ones.
            created = [await c.create_flow_run("shipped/d", parameters={"i": i}) for i in range(16)]
            cluster[2].kill()
            finished = await _ended(c, created, 240)
            states = Counter(r.state.type.value for r in finished)
            print(f"runs under the node loss: {dict(states)}")
            for message in {r.state.message for r in finished if r.state.type.value != "COMPLETED"}:
                print(f"  {message}")
            assert {r.state.type for r in finished} == {StateType.COMPLETED}, states
            after = await _runs(c, "shipped/d", 4)
            assert {r.state.type for r in after} == {StateType.COMPLETED}, [
                r.state.message for r in after
            ]
    except BaseException:
        for proc in stack.procs:
            print(proc.tail())
        raise
    finally:
        stack.stop_all()
