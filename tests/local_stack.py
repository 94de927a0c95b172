"""docker-compose.yml without Docker: run it as local processes.

:class:`LocalStack` runs what the file describes on this machine: nats-server
with the configuration in deploy/ (only the address, ports and store folder
given on the command line, as the container's volume and network would),
then each Sluice service's command as a process, in ``depends_on`` order,
waiting for a dependency's own health check when the file says
``service_healthy``; ``deploy.replicas`` processes of a replicated service.
How the file is read, and where its paths point, is ``tests/deploy_support.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from services.dev._natsserver import free_port, server_binary
from shared.settings import Settings

from .deploy_support import (
    NATS_SERVICE,
    REPO,
    ROLES,
    depends_healthy,
    health_argv,
    load_compose,
    local_path,
    mounts,
    python_module,
    replicas,
    service_env,
    start_order,
)


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, and the exit code (SIGKILL and -9 if it takes over ``timeout``)."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                return -9
        return self.popen.returncode

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return f"--- {self.name} ---\n" + "\n".join(text)


def passwords() -> dict[str, str]:
    """Fresh passwords, as an operator would put them in .env."""
    # nats-server parses a substituted variable as a config value, so a password
    # must read as a string: a letter first (one starting with a digit fails).
    return {f"SLUICE_{r.upper()}_PASSWORD": "pw" + secrets.token_hex(16) for r in ROLES}


def _two_free_ports() -> tuple[int, int]:
    while True:
        a, b = free_port(), free_port()
        if a != b:
            return a, b


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "OTEL_"))}


class LocalStack:
    """The compose stack as local processes (see the module docstring)."""

    def __init__(
        self,
        tmp: Path,
        *,
        compose: Mapping[str, Any] | None = None,
        only: Iterable[str] | None = None,
    ) -> None:
        self.compose = compose if compose is not None else load_compose()
        self.tmp = tmp
        self.dotenv = passwords()
        self.only = set(only) if only is not None else None
        self.port, self.http_port = _two_free_ports()
        self.store = tmp / "nats-data"
        self.nats: Process | None = None
        self.services: dict[str, list[Process]] = {}

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def password(self, role: str) -> str:
        return self.dotenv[f"SLUICE_{role.upper()}_PASSWORD"]

    def settings(self, role: str, **kw: Any) -> Settings:
        """Settings of a process connecting as ``role`` (a user in deploy/nats/auth.conf)."""
        return Settings(
            nats_url=self.url,
            nats_user=role,
            nats_password=self.password(role),
            home=self.tmp / f"home-{role}",
            **kw,
        )

    # --- nats ---
    def nats_argv(self) -> list[str]:
        service = self.compose["services"][NATS_SERVICE]
        mapping = mounts(service)
        argv = [str(a) for a in service["command"]]
        if argv[0] == "nats-server":
            argv = argv[1:]
        out: list[str] = []
        flags = iter(argv)
        for flag in flags:
            if flag in ("-c", "--config"):
                path = local_path(next(flags), mapping)
                assert path is not None
                out += [flag, str(path)]
            elif flag in ("-sd", "--store_dir"):
                next(flags)  # the named volume: a folder of ours instead
                out += [flag, str(self.store)]
            else:
                out.append(flag)
        # The container's network: its address and ports, here free ones.
        port, http = str(self.port), str(self.http_port)
        return [server_binary(), *out, "-a", "127.0.0.1", "-p", port, "-m", http]

    def nats_health_url(self) -> str:
        check = health_argv(self.compose["services"][NATS_SERVICE]) or []
        url = next(a for a in check if a.startswith("http"))
        return re.sub(r"//[^/]+", f"//127.0.0.1:{self.http_port}", url, count=1)

    def nats_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.nats_health_url(), timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start_nats(self, timeout: float = 30.0) -> None:
        """Start nats-server; on its first start, on other free ports if another
        process took the chosen ones meanwhile (the machine is shared)."""
        service = self.compose["services"][NATS_SERVICE]
        env = {**_clean_environ(), **service_env(service, self.dotenv)}
        first = self.nats is None
        for attempt in range(5):
            self.nats = Process("nats", self.nats_argv(), env, self.tmp / f"nats-{attempt}.log")
            self.nats.start()
            try:
                self._wait(lambda: self.nats_healthy(), "nats", self.nats, timeout)
                return
            except RuntimeError as exc:
                if not (first and "address already in use" in str(exc)):
                    raise
                self.port, self.http_port = _two_free_ports()
        raise RuntimeError("no free ports for nats-server")

    def stop_nats(self) -> None:
        if self.nats is not None:
            self.nats.terminate()

    def violations(self) -> list[str]:
        """Permission violations the server logged (a role lacking a subject it needs)."""
        lines = []
        for log in sorted(self.tmp.glob("nats-*.log")):
            lines += log.read_text(errors="replace").splitlines()
        return [line for line in lines if "Violation" in line]

    # --- services ---
    def service_processes(self, name: str) -> list[Process]:
        service = self.compose["services"][name]
        mapping = mounts(service)
        module, args = python_module([str(a) for a in service["command"]])
        argv = [sys.executable, "-m", module] + [str(local_path(a, mapping) or a) for a in args]
        out = []
        for i in range(replicas(service)):
            env = {**_clean_environ(), **service_env(service, self.dotenv)}
            # What the container network and its own filesystem would give it.
            env["SLUICE_NATS_URL"] = self.url
            env["SLUICE_HOME"] = str(self.tmp / f"{name}-{i}")
            if "SLUICE_UI_PORT" in env:  # the web UI's published port: a free one here
                env["SLUICE_UI_HOST"], env["SLUICE_UI_PORT"] = "127.0.0.1", str(free_port())
            out.append(Process(f"{name}-{i}", argv, env, self.tmp / f"{name}-{i}.log"))
        return out

    def healthy(self, proc: Process) -> bool:
        service = self.compose["services"][proc.name.rsplit("-", 1)[0]]
        argv = health_argv(service)
        if argv is None:
            return proc.alive()
        module, args = python_module(argv)
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=proc.env,
            cwd=REPO,
            capture_output=True,
            timeout=60,
        )
        return done.returncode == 0

    def _wait(self, ok: Any, what: str, proc: Process, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                code = proc.popen and proc.popen.returncode
                raise RuntimeError(f"{what} exited with {code}\n{proc.tail()}")
            if ok():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not healthy within {timeout}s\n{proc.tail()}")

    def start(self, timeout: float = 90.0) -> None:
        self.start_nats()
        for name in start_order(self.compose):
            if name == NATS_SERVICE or (self.only is not None and name not in self.only):
                continue
            service = self.compose["services"][name]
            for dep in depends_healthy(service):
                if dep != NATS_SERVICE and dep in self.services:
                    for proc in self.services[dep]:
                        self._wait(lambda p=proc: self.healthy(p), dep, proc, timeout)
            procs = self.service_processes(name)
            for proc in procs:
                proc.start()
            self.services[name] = procs
        for name, procs in self.services.items():
            for proc in procs:
                self._wait(lambda p=proc: self.healthy(p), name, proc, timeout)

    def stop(self) -> dict[str, int]:
        """Stop as compose does (dependents first); each process's exit code."""
        codes = {}
        for name in reversed(list(self.services)):
            for proc in self.services[name]:
                codes[proc.name] = proc.terminate()
        self.stop_nats()
        return codes

    def logs(self) -> str:
        procs = [p for ps in self.services.values() for p in ps]
        return "\n".join(p.tail() for p in ([self.nats] if self.nats else []) + procs)


@contextlib.contextmanager
def started(tmp: Path, *, only: Iterable[str] | None = None) -> Iterator[LocalStack]:
    """A LocalStack started for the block and stopped after it; its processes'
    logs are printed when it fails to start."""
    local = LocalStack(tmp, only=only)
    try:
        local.start()
    except BaseException:
        print(local.logs())
        local.stop()
        raise
    try:
        yield local
    finally:
        local.stop()
