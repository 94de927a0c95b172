"""Every service started before NATS is reachable (and a runner started before
the orchestrator): it says it is waiting, stops at once on SIGTERM or SIGINT,
and (the UI) answers 503 with a page that says why; a SluiceError that ends
a service is the CLI's one line, not a traceback.

Real processes, against a port where no NATS listens; then, for the UI and
the runner, a real nats-server on that port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.dev import NatsServer
from services.dev._natsserver import free_port, server_binary

pytestmark = pytest.mark.slow

#: Generous: a loaded machine starts Python processes slowly.
DEADLINE = 60.0

SERVICES = [
    ("services.orchestrator", []),
    ("services.scheduler", []),
    ("services.cancellation_watcher", []),
    ("services.runner", ["--queue", "default"]),
    ("services.ui", ["--port", "0"]),
]


class Proc:
    def __init__(self, module: str, args: list[str], url: str, home: Path) -> None:
        self.log = home / f"{module}.log"
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(SLUICE_NATS_URL=url, SLUICE_HOME=str(home), SLUICE_LOG_LEVEL="INFO")
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str) -> str:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {needle!r} in the log:\n{self.text()}")

    def stop(self, sig: int) -> int:
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"no exit after {sig!r}:\n{self.text()}") from None


@pytest.fixture
def nowhere() -> Iterator[str]:
    """A URL where nothing listens (the port is free)."""
    yield f"nats://127.0.0.1:{free_port()}"


def _ui_port(proc: Proc) -> int:
    text = proc.wait_for("web UI on http://")
    return int(text.split("web UI on http://", 1)[1].split(":", 1)[1].split()[0].strip("/"))


def _get(port: int, path: str = "/runs") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=DEADLINE) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize(("module", "args"), SERVICES, ids=[m for m, _ in SERVICES])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_service_without_nats_says_so_and_stops_on_a_signal(
    module: str, args: list[str], sig: int, nowhere: str, tmp_path: Path
) -> None:
    proc = Proc(module, args, nowhere, tmp_path)
    try:
        text = proc.wait_for(f"waiting for NATS at {nowhere}")
        assert "INFO" in text.split(f"waiting for NATS at {nowhere}")[0].splitlines()[-1]
        if module == "services.ui":
            status, page = _get(_ui_port(proc))
            assert status == 503
            assert "waiting for NATS" in page and nowhere in page
        assert proc.stop(sig) == 0, proc.text()
        assert "Traceback" not in proc.text()
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_runner_waiting_for_the_orchestrator_stops_on_a_signal(
    sig: int, nowhere: str, tmp_path: Path
) -> None:
    """NATS is up but no orchestrator has made the dispatch consumer yet: the
    runner says so, and a signal ends that wait, however long it would last."""
    server = NatsServer(tmp_path / "nats", port=int(nowhere.rsplit(":", 1)[1]))
    server.start()
    proc = Proc("services.runner", ["--queue", "default"], nowhere, tmp_path / "runner")
    try:
        proc.wait_for("is the orchestrator running?")  # its first heartbeat, unanswered
        assert proc.stop(sig) == 0, proc.text()
        assert "stopped before it was ready" in proc.text()
        assert "Traceback" not in proc.text()
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()
        server.stop()


def test_the_ui_serves_once_nats_comes(nowhere: str, tmp_path: Path) -> None:
    port = int(nowhere.rsplit(":", 1)[1])
    proc = Proc("services.ui", ["--port", "0"], nowhere, tmp_path / "ui")
    server = NatsServer(tmp_path / "nats", port=port)
    try:
        ui_port = _ui_port(proc)
        proc.wait_for(f"waiting for NATS at {nowhere}")
        assert _get(ui_port)[0] == 503
        server.start()
        proc.wait_for("connected to NATS")
        deadline = time.monotonic() + DEADLINE
        # Pages need the orchestrator's buckets; without them the UI says the
        # stack is unavailable (a 503 too, as a page of the app, not a hang).
        while "waiting for NATS at" in _get(ui_port)[1]:
            assert time.monotonic() < deadline, proc.text()
            time.sleep(0.1)
        assert proc.stop(signal.SIGTERM) == 0, proc.text()
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()
        server.stop()


def test_a_service_that_cannot_start_prints_one_line(tmp_path: Path, nowhere: str) -> None:
    """The UI's port is taken: the same one-line ``error:`` the CLI prints."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = Proc("services.ui", ["--port", str(port)], nowhere, tmp_path)
        assert proc.popen.wait(DEADLINE) == 1
    text = proc.text()
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, text
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0]


def test_the_cli_says_the_same_when_nats_is_not_there(nowhere: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    env.update(SLUICE_NATS_URL=nowhere, SLUICE_HOME=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "flow-run", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert out.returncode == 1
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: cannot reach NATS at " + nowhere), lines


def test_the_cli_says_so_when_the_server_has_no_jetstream(nowhere: str, tmp_path: Path) -> None:
    """A nats-server without JetStream (or one still starting it): reading a run
    by its id is one ``error:`` line too, not a traceback from nats-py."""
    port = int(nowhere.rsplit(":", 1)[1])
    bare = subprocess.Popen(
        [server_binary(), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(SLUICE_NATS_URL=nowhere, SLUICE_HOME=str(tmp_path))
        run_id = "3f2b8a1e-1111-4222-8333-944455556666"
        deadline = time.monotonic() + DEADLINE
        while True:  # until the bare server listens
            assert time.monotonic() < deadline, "the bare nats-server did not start"
            out = subprocess.run(
                [sys.executable, "-m", "engine.cli", "flow-run", "inspect", run_id],
                env=env,
                capture_output=True,
                text=True,
                timeout=DEADLINE,
            )
            if "cannot reach NATS" not in out.stderr + out.stdout:
                break
    finally:
        bare.terminate()
        bare.wait()
    assert out.returncode == 1
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: JetStream is not available on this NATS server"), lines
