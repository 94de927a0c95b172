"""The multi-host tutorial against a real three-node NATS cluster.

Three nats-servers form one cluster (JetStream, ``sync_interval: always``),
Sluice keeps three replicas of everything (``SLUICE_REPLICAS=3``), a
deployment is registered from one folder that then disappears, and a runner
holding its own copy of the code (``--path``) runs it. Then a node is
killed, and the next run still completes on the two that remain (losing a
node under load is tested in ``tests/faults/test_storage_faults.py``).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import anyio
import nats
import pytest

from services.dev import NatsServer
from shared import names

from ..faults.test_storage_faults import cluster, wait_for_jetstream
from .test_tutorials import DEADLINE, TUTORIALS, Stack

__all__ = ["cluster"]  # a fixture, used by name

# A cluster electing leaders on a loaded machine: more than the suite's 120 s hang guard.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


async def _replicas(url: str) -> int:
    nc = await nats.connect(servers=url.split(","))
    try:
        info = await nc.jetstream().stream_info(names.kv_stream(names.FLOW_RUNS_BUCKET))
        return info.config.num_replicas or 0
    finally:
        await nc.close()


def test_runners_on_another_host_against_a_nats_cluster(
    cluster: list[NatsServer], tmp_path: Path
) -> None:
    url = ",".join(node.url for node in cluster)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_NATS_URL=url,
        SLUICE_REPLICAS="3",
        SLUICE_HOME=str(tmp_path / "home"),
        SLUICE_LOG_LEVEL="WARNING",
    )
    (tmp_path / "logs").mkdir()
    stack = Stack(env=env, logs=tmp_path / "logs")
    try:
        # As an operator would: the cluster first, then the orchestrator that
        # creates the replicated buckets and streams on it.
        anyio.run(wait_for_jetstream, url.split(",")[0])
        orchestrator = stack.start(sys.executable, "-m", "services.orchestrator", cwd=tmp_path)
        deadline = time.monotonic() + DEADLINE
        while "error" in stack.sluice("deployment", "ls", check=False):
            assert orchestrator.poll() is None, f"the orchestrator exited (see {stack.logs})"
            assert time.monotonic() < deadline, "the orchestrator did not start on the cluster"
            time.sleep(0.5)
        assert anyio.run(_replicas, url) == 3

        host_a, host_b = tmp_path / "a" / "flows", tmp_path / "b" / "srv" / "flows"
        for copy in (host_a, host_b):
            shutil.copytree(TUTORIALS, copy, ignore=shutil.ignore_patterns("__pycache__"))
        stack.sluice("deployment", "create", "deployments.py", cwd=host_a)
        shutil.rmtree(host_a)
        stack.start(
            sys.executable,
            "-m",
            "services.runner",
            "--name",
            "host-b",
            "--queue",
            "host-b",
            "--path",
            str(host_b),
            cwd=tmp_path / "b",
        )
        out = stack.sluice("deployment", "run", "greet/remote", "--param", "name=Bob", "--watch")
        assert "HELLO, BOB!" in out and "host-b" in out

        # One node dies: the two left hold every replica. Requests during the
        # leader election may fail with a retryable error; the same idempotency
        # key makes retrying safe, as the error says.
        cluster[0].kill()

        def create() -> str | None:
            run = stack.try_json(
                "deployment", "run", "greet/remote", "--param", "name=Eve",
                "--idempotency-key", "after-node-loss",
            )  # fmt: skip
            return None if run is None else str(run["id"])

        def state(run_id: str) -> str | None:
            run = stack.try_json("flow-run", "inspect", run_id)
            return None if run is None else str(run["state"]["type"])

        run_id = stack.wait_for("a create after the node loss", create)

        def ended() -> str | None:
            current = state(run_id)
            return current if current in TERMINAL else None

        assert stack.wait_for("the run to end", ended) == "COMPLETED"
        again = stack.wait_for("the same key, asked again", create)
        assert again == run_id, "the retried key found the same run"

    finally:
        stack.stop_background()
