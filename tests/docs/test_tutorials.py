"""The tutorials, run as a reader runs them: their files under ``examples/``,
their commands through the ``sluice`` console script, against a real stack.

The stack is ``python -m services.dev`` (what ``sluice dev`` runs) on a free
port with its data in a temp folder and no example deployments; everything
else is the command the page shows, in the folder the page says.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.dev import free_port
from tests._procs import stop_dev_stack

REPO = Path(__file__).parents[2]
TUTORIALS = REPO / "examples" / "tutorials"
MIGRATION = REPO / "examples" / "migration"
SLUICE = str(Path(sys.executable).parent / "sluice")
DEADLINE = 120.0  # a loaded machine: generous, and never a measure of speed

# Each waits up to DEADLINE for a step, on a shared machine: above the 120 s hang guard.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass
class Stack:
    env: dict[str, str]
    logs: Path
    """Where background processes write their output (a pipe nobody reads would fill)."""
    background: list[subprocess.Popen[str]] = field(default_factory=list)

    def run(self, *args: str, cwd: Path = TUTORIALS) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SLUICE, *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=300
        )

    def sluice(self, *args: str, cwd: Path = TUTORIALS, check: bool = True) -> str:
        """``sluice ARGS`` in ``cwd``; what it printed (both streams, as a terminal shows).
        Fails the test on a non-zero exit unless ``check`` is false."""
        done = self.run(*args, cwd=cwd)
        if check:
            assert done.returncode == 0, f"sluice {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def json(self, *args: str, cwd: Path = TUTORIALS) -> Any:
        """``sluice ARGS --json``: the JSON document on stdout (notices go to stderr)."""
        done = self.run(*args, "--json", cwd=cwd)
        assert done.returncode == 0, f"sluice {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return json.loads(done.stdout)

    def try_json(self, *args: str) -> Any:
        """Like :meth:`json`, but None when the command fails (a stack still recovering)."""
        done = self.run(*args, "--json")
        if done.returncode != 0:
            return None
        with contextlib.suppress(ValueError):
            return json.loads(done.stdout)
        return None

    def start(self, *argv: str, cwd: Path = TUTORIALS) -> subprocess.Popen[str]:
        """A process the page starts in another terminal (stopped with Ctrl-C at the end)."""
        log = self.logs / f"{len(list(self.logs.iterdir()))}-{Path(argv[-1]).name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.background.append(proc)
        return proc

    def wait_for(self, what: str, probe: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            for proc in self.background:
                if proc.poll() is not None and proc.returncode not in (0, -signal.SIGINT):
                    pytest.fail(f"{proc.args} exited {proc.returncode} ({self.logs})")
            if value := probe():
                return value
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {what} (output in {self.logs})")

    def deployment_exists(self, name: str) -> bool:
        return "error" not in self.sluice("deployment", "inspect", name, check=False)

    def stop_background(self) -> None:
        while self.background:
            proc = self.background.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C, as the reader stops it
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(
        SLUICE_NATS_URL=f"nats://127.0.0.1:{free_port()}",
        SLUICE_HOME=str(home),
        SLUICE_EXAMPLES="",
        SLUICE_UI_PORT="off",
        SLUICE_LOG_LEVEL="WARNING",
    )
    with (home / "dev.log").open("w") as log:
        dev = subprocess.Popen(
            [sys.executable, "-m", "services.dev"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    logs = home / "logs"
    logs.mkdir()
    stack = Stack(env=env, logs=logs)
    try:
        deadline = time.monotonic() + DEADLINE
        while "error" in stack.sluice("deployment", "ls", check=False):
            assert dev.poll() is None, (home / "dev.log").read_text()
            assert time.monotonic() < deadline, "the stack did not start"
            time.sleep(0.5)
        yield stack
    finally:
        stack.stop_background()
        stop_dev_stack(dev, home)


@pytest.fixture(autouse=True)
def _stop_background(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").stop_background()


def _no_stack_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}


def _python(script: str, cwd: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_first_flow_to_first_deployment(stack: Stack) -> None:
    # Step 1: no server at all.
    local = subprocess.run(
        [SLUICE, "run", "--path", "greet.py", "--param", "name=Ada"],
        cwd=TUTORIALS,
        env=_no_stack_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert local.returncode == 0, local.stdout + local.stderr
    assert "HELLO, ADA!" in local.stdout
    # Step 2: serve it, run it through the stack, look at it.
    stack.start(sys.executable, "greet.py")
    stack.wait_for("greet/loud", lambda: stack.deployment_exists("greet/loud"))
    out = stack.sluice("deployment", "run", "greet/loud", "--param", "name=Ada", "--watch")
    assert "HELLO, ADA!" in out
    assert "Completed" in out
    runs = stack.json("flow-run", "ls", "--deployment", "greet/loud")
    assert runs["flow_runs"]
    assert all(r["state"]["type"] == "COMPLETED" for r in runs["flow_runs"])
    # A parameter of the wrong type is refused before anything runs.
    refused = stack.sluice("deployment", "run", "greet/loud", "--param", "name=3", check=False)
    assert "name" in refused and "error" in refused.lower()


def test_schedules(stack: Stack) -> None:
    stack.start(sys.executable, "heartbeat.py")
    done = stack.wait_for(
        "a scheduled run to complete",
        lambda: stack.json(
            "flow-run", "ls", "--deployment", "heartbeat/every-10s", "--state", "COMPLETED"
        )["flow_runs"],
    )
    assert done[0]["state"]["name"] == "Completed"
    upcoming = stack.json(
        "flow-run", "ls", "--deployment", "heartbeat/every-10s", "--state", "SCHEDULED"
    )
    assert upcoming["flow_runs"], "the scheduler keeps upcoming runs"
    stack.sluice("deployment", "pause", "heartbeat/every-10s")
    assert stack.json("deployment", "inspect", "heartbeat/every-10s")["paused"] is True


def test_retries_and_caching_locally_and_on_the_stack(stack: Stack) -> None:
    out = _python("flaky.py", TUTORIALS, _no_stack_env())
    assert "result: 98" in out
    assert "fetch ran 3 times, square 1 time(s)" in out
    reported = stack.sluice("run", "--path", "flaky.py")
    assert "Completed" in reported and "98" in reported


def test_tasks_on_dask(stack: Stack) -> None:
    assert _python("dask_sum.py", TUTORIALS, _no_stack_env()).strip().endswith("3025")
    reported = stack.sluice("run", "--path", "dask_sum.py", "--param", "n=5")
    assert "Completed" in reported and "225" in reported


def test_deployments_file_registers_the_docker_and_limited_deployments(stack: Stack) -> None:
    stack.sluice("deployment", "create", "deployments.py")
    docker = stack.json("deployment", "inspect", "greet/in-docker")
    assert docker["infrastructure"]["type"] == "docker"
    limited = stack.json("deployment", "inspect", "slow-greet/one-at-a-time")
    assert limited["concurrency_limit"] == 1
    assert stack.json("deployment", "inspect", "greet/remote")["queue"] == "host-b"


def test_a_runner_on_another_host_runs_code_it_holds(stack: Stack, tmp_path: Path) -> None:
    # Host A registers from its own copy of the code, then that copy is gone:
    # only the runner's copy on "host B" can run it.
    host_a, host_b = tmp_path / "a" / "flows", tmp_path / "b" / "srv" / "flows"
    shutil.copytree(TUTORIALS, host_a, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(TUTORIALS, host_b, ignore=shutil.ignore_patterns("__pycache__"))
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


def test_the_migration_example_runs(stack: Stack) -> None:
    stack.start(sys.executable, "sluice_etl.py", cwd=MIGRATION)
    stack.wait_for("etl-report/nightly", lambda: stack.deployment_exists("etl-report/nightly"))
    out = stack.sluice(
        "deployment", "run", "etl-report/nightly", "--param", "day=2026-11-20", "--watch"
    )
    assert "Completed" in out
    # log_prints=True: the flow's print reached the run's logs, with `day` a date.
    assert "2026-11-20: 9 orders, revenue 180" in out


def test_the_nats_py_how_to_creates_and_follows_a_run(stack: Stack) -> None:
    stack.start(sys.executable, "greet.py")
    stack.wait_for("greet/loud", lambda: stack.deployment_exists("greet/loud"))
    how_to = str(REPO / "examples" / "howto" / "create_run.py")
    out = _python(how_to, TUTORIALS, stack.env, "greet/loud")
    assert out.startswith("created ")
    assert out.strip().endswith("Completed")
    refused = subprocess.run(
        [sys.executable, how_to, "no-such/flow"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "refused: deployment_not_found" in refused.stderr


def test_the_concurrency_limit_how_to(stack: Stack) -> None:
    # The runner of `sluice dev` serves the default queue; the limit of 1 holds
    # the second run back while the first one runs.
    stack.sluice("deployment", "create", "deployments.py")
    ids = [
        stack.json("deployment", "run", "slow-greet/one-at-a-time", "--param", "seconds=60")["id"]
        for _ in range(2)
    ]

    def one_running() -> list[str]:
        states = {i: stack.json("flow-run", "inspect", i)["state"]["type"] for i in ids}
        return [i for i, s in states.items() if s == "RUNNING"]

    running = stack.wait_for("one run to start", one_running)
    assert len(running) == 1
    (waiting,) = set(ids) - set(running)
    assert stack.json("flow-run", "inspect", waiting)["state"]["type"] == "SCHEDULED"
    assert "concurrency" in stack.sluice("flow-run", "inspect", waiting)
    for run_id in ids:
        stack.sluice("flow-run", "cancel", run_id)


def test_the_runs_from_python_how_to(stack: Stack) -> None:
    stack.start(sys.executable, "greet.py")
    stack.wait_for("greet/loud", lambda: stack.deployment_exists("greet/loud"))
    how_to = str(REPO / "examples" / "howto" / "from_python.py")
    first = _python(how_to, TUTORIALS, stack.env, "greet/loud").splitlines()
    assert first[0].split()[1:] == ["Completed", "HELLO,", "LIN!"]
    # The idempotency key: running the script again finds the same run.
    again = _python(how_to, TUTORIALS, stack.env, "greet/loud").splitlines()
    assert again[0] == first[0]
    assert first[1].endswith("completed run(s) of greet/loud")
