"""The two stacks the comparison starts, drives and stops: Sluice's and Prefect's.

Both offer the same operations, each timed the same way:

* ``start()``: launch from nothing; seconds until the no-op deployment is
  served (the runner registered it and takes work), then until a first run of
  it Completed;
* ``single()``: one run on an idle runner, (create -> Running, create ->
  Completed) from the server's own timestamps of the run;
* ``cancel_once()``: a sleeping run cancelled: seconds from the cancel request
  to the run Cancelled, which both runners report only once its process is gone;
* ``batch(n)``: n runs created at once, (first create -> last end, runs/s);
* ``pids()``: the processes whose trees make up the stack, for memory.

Sluice runs as ``python -m services.dev`` (the embedded stack ``sluice dev``
starts: nats-server and every service; its runner has limit 8), or the same
with the runner's fork server (``python -m bench._dev_stack --fork``). Prefect
runs as ``prefect server start`` (SQLite in a temp folder) plus
``bench/prefect_side/served.py`` (``serve(..., limit=8)``), both from
``bench/.prefect-venv``; runs are created, read and cancelled through
Prefect's REST API, the calls its client and CLI make.

Every process is started in its own session and ``stop()`` ends the whole
group (SIGTERM, a grace period, SIGKILL), so nothing outlives the benchmark.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from engine.client import Client
from services.dev import free_port
from shared.settings import Settings

from . import _prefect_venv
from ._harness import REPO, backend_options
from .cancel import cancel_once
from .runner import batch_runs, single_run

T = TypeVar("T")
PREFECT_SIDE = REPO / "bench" / "prefect_side"
READY_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0
RETRY_503_S = 120.0
"""How long a Prefect API call is retried while the server answers 503 (database busy)."""


def clean_env() -> dict[str, str]:
    """This environment without either project's settings, so neither leaks in."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PREFECT_"))}


def prefect_env(home: Path) -> dict[str, str]:
    """Prefect in a private home with a local SQLite, quiet, polling as often as it allows."""
    return clean_env() | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",
        # the smallest value of this integer setting; 0 would poll in a busy loop
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }


def sluice_env(home: Path, nats_url: str | None = None) -> dict[str, str]:
    env = clean_env() | {"SLUICE_HOME": str(home), "SLUICE_LOG_LEVEL": "WARNING"}
    if nats_url:
        env["SLUICE_NATS_URL"] = nats_url
    return env


def launch(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_group(proc: subprocess.Popen[bytes] | None, grace: float = 20.0) -> None:
    """SIGTERM the process's group, then SIGKILL what is left after ``grace``. Idempotent."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; children of its group may not be
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        break


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_alive(proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")


# --- Sluice ------------------------------------------------------------------------------
class SluiceStack:
    def __init__(self, tmp: Path, *, fork: bool) -> None:
        self.fork = fork
        self.home = tmp / "home"
        self.log = tmp / "stack.log"
        self.url = f"nats://127.0.0.1:{free_port()}"
        self.settings = Settings(nats_url=self.url, home=self.home)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "bench._dev_stack", *(["--fork"] if self.fork else [])]

    def task_env(self) -> dict[str, str]:
        return sluice_env(self.home, self.url)

    def _run(self, fn: Callable[[Client], Awaitable[T]], timeout: float = RUN_TIMEOUT) -> T:
        async def main() -> T:
            with anyio.fail_after(timeout):
                async with Client(self.settings, connect_timeout=10) as client:
                    return await fn(client)

        return anyio.run(main, backend_options=backend_options())

    def start(self) -> tuple[float, float]:
        env = sluice_env(self.home, self.url) | {
            "SLUICE_EXAMPLES": str(REPO / "bench" / "_deployments.py")
        }
        started = time.perf_counter()
        self.proc = launch(self.argv, env, REPO, self.log)
        proc = self.proc

        async def until_served() -> None:
            with anyio.fail_after(READY_TIMEOUT):
                while True:
                    check_alive(proc, self.log, "the Sluice stack")
                    try:
                        async with Client(self.settings, connect_timeout=0.5) as client:
                            await client.read_deployment("noop/bench")
                            await client.read_deployment("sleeper/bench")
                            return
                    except Exception:
                        await anyio.sleep(0.02)

        anyio.run(until_served, backend_options=backend_options())
        ready = time.perf_counter() - started
        self.single()
        return ready, time.perf_counter() - started

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def single(self) -> tuple[float, float]:
        return self._run(lambda c: single_run(c, "noop/bench"))

    def cancel_once(self) -> float:
        return self._run(lambda c: cancel_once(c, "sleeper/bench"))

    def batch(self, count: int) -> tuple[float, float]:
        total, rate, _ = self._run(lambda c: batch_runs(c, "noop/bench", count), timeout=1200)
        return total, rate

    def stop(self) -> None:
        stop_group(self.proc)


# --- Prefect ------------------------------------------------------------------------------
def _timestamp(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class PrefectStack:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.server_log = tmp / "server.log"
        self.serve_log = tmp / "serve.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.served: subprocess.Popen[bytes] | None = None
        self.deployments: dict[str, str] = {}

    @property
    def server_argv(self) -> list[str]:
        prefect = str(_prefect_venv.VENV / "bin" / "prefect")
        return [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]

    @property
    def serve_argv(self) -> list[str]:
        return [str(_prefect_venv.PYTHON), "served.py"]

    def task_env(self) -> dict[str, str]:
        return prefect_env(self.home) | {"PREFECT_API_URL": self.api}

    def _http(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        deadline = time.monotonic() + RETRY_503_S
        pause = 0.1
        while True:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as reply:
                    raw = reply.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                # 503 is Prefect's "retry me" (mostly SQLite busy); its own client retries too
                if exc.code != 503 or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _until(self, what: str, probe: Callable[[], T | None], timeout: float, pause: float) -> T:
        deadline = time.monotonic() + timeout
        while True:
            for proc, log, name in (
                (self.server, self.server_log, "prefect server"),
                (self.served, self.serve_log, "the served flows"),
            ):
                if proc is not None:
                    check_alive(proc, log, name)
            try:
                found = probe()
            except (OSError, urllib.error.URLError, ValueError):
                found = None
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prefect: {what} not within {timeout:.0f} s")
            time.sleep(pause)

    def start(self) -> tuple[float, float]:
        env = prefect_env(self.home)
        started = time.perf_counter()
        self.server = launch(self.server_argv, env, self.home, self.server_log)
        self._until("server healthy", lambda: self._http("GET", "/health"), READY_TIMEOUT, 0.02)
        self.served = launch(
            self.serve_argv, env | {"PREFECT_API_URL": self.api}, PREFECT_SIDE, self.serve_log
        )
        for flow in ("noop", "sleeper"):
            self.deployments[flow] = self._until(
                f"deployment {flow}/bench",
                lambda flow=flow: self._http("GET", f"/deployments/name/{flow}/bench")["id"],
                READY_TIMEOUT,
                0.02,
            )
        ready = time.perf_counter() - started
        self.single()
        return ready, time.perf_counter() - started

    def pids(self) -> list[int]:
        return [p.pid for p in (self.server, self.served) if p is not None and p.poll() is None]

    def _create(self, flow: str) -> str:
        run = self._http("POST", f"/deployments/{self.deployments[flow]}/create_flow_run", {})
        return str(run["id"])

    def _read(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self._http("GET", f"/flow_runs/{run_id}")
        return run

    def _until_state(self, run_id: str, types: set[str], pause: float) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            run = self._read(run_id)
            return run if run.get("state_type") in types else None

        return self._until(f"run {run_id} in {sorted(types)}", probe, RUN_TIMEOUT, pause)

    def single(self) -> tuple[float, float]:
        run = self._until_state(self._create("noop"), {"COMPLETED", "FAILED", "CRASHED"}, 0.02)
        if run["state_type"] != "COMPLETED":
            raise RuntimeError(f"Prefect run ended {run['state_type']}: {run['state']}")
        created = _timestamp(run["created"])
        return (
            (_timestamp(run["start_time"]) - created).total_seconds(),
            (_timestamp(run["end_time"]) - created).total_seconds(),
        )

    def cancel_once(self) -> float:
        run_id = self._create("sleeper")
        self._until_state(run_id, {"RUNNING"}, 0.05)
        started = time.perf_counter()
        # what `prefect flow-run cancel` does: propose Cancelling; the runner kills the process
        reply = self._http(
            "POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}}
        )
        if reply.get("status") != "ACCEPT":
            raise RuntimeError(f"Prefect refused Cancelling: {reply}")
        self._until_state(run_id, {"CANCELLED"}, 0.02)
        return time.perf_counter() - started

    def batch(self, count: int) -> tuple[float, float]:
        ids = [self._create("noop") for _ in range(count)]
        terminal = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

        def probe() -> list[dict[str, Any]] | None:
            runs: list[dict[str, Any]] = self._http(
                "POST", "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": count}
            )
            done = [r for r in runs if r.get("state_type") in terminal]
            return runs if len(done) == count else None

        runs = self._until(f"{count} runs finished", probe, 1200, 0.5)
        failed = [r for r in runs if r["state_type"] != "COMPLETED"]
        if failed:
            raise RuntimeError(f"{len(failed)} Prefect runs did not complete: {failed[0]['state']}")
        first = min(_timestamp(r["created"]) for r in runs)
        last = max(_timestamp(r["end_time"]) for r in runs)
        total = (last - first).total_seconds()
        return total, count / total

    def stop(self) -> None:
        stop_group(self.served)
        stop_group(self.server)


Stack = SluiceStack | PrefectStack
