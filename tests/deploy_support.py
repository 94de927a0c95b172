"""docker-compose.yml without Docker: read it, check it, run it as local processes.

:func:`problems` lists every module, variable or file a compose service names
that does not exist. :class:`LocalStack` runs what the file describes on this
machine: nats-server with the configuration in deploy/ (only the address,
ports and store folder given on the command line, as the container's volume
and network would), then each Sluice service's command as a process, in
``depends_on`` order, waiting for a dependency's own health check when the
file says ``service_healthy``; ``deploy.replicas`` processes of a replicated
service. Paths inside the container map to the repository: mounted folders
to their source, and the image's working directory to the repository root
(deploy/Dockerfile copies the repository there).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
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

import yaml

from engine.runner._credentials import FLOW_CREDENTIALS
from services.dev._natsserver import free_port, server_binary
from services.ui._auth import ENV_VARS as UI_ACCESS_VARS
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
#: The image's WORKDIR (deploy/Dockerfile), where the repository's files are.
IMAGE_WORKDIR = "/app"
#: The compose services that run nats-server rather than Sluice.
NATS_SERVICE = "nats"
#: Standard OpenTelemetry variables a compose file may set.
OTEL_VARS = {
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
}
ROLES = ("orchestrator", "scheduler", "watcher", "runner", "client", "operator")

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# --- reading the file ---------------------------------------------------------------
def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in ("-", ":-") and unset:
            return arg
        if op in ("?", ":?") and unset:
            raise ValueError(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(one, value)


def service_env(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), env) for k, v in raw.items()}


def mounts(service: Mapping[str, Any]) -> dict[str, Path]:
    """Container path -> local path, for the image's files and bind mounts."""
    out = {IMAGE_WORKDIR: REPO}
    for volume in service.get("volumes") or []:
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (REPO / source).resolve()
    return out


def local_path(arg: str, mapping: Mapping[str, Path]) -> Path | None:
    """Where a container path (an absolute one) is on this machine, if it is mapped."""
    if not arg.startswith("/"):
        return None
    for target in sorted(mapping, key=len, reverse=True):
        if arg == target or arg.startswith(target.rstrip("/") + "/"):
            return mapping[target] / arg[len(target) :].lstrip("/")
    return None


def is_sluice(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile"


def python_module(argv: list[str]) -> tuple[str, list[str]]:
    """``python -m <module> args…`` -> (module, args)."""
    if len(argv) < 3 or argv[0] != "python" or argv[1] != "-m":
        raise ValueError(f"not `python -m <module> …`: {argv}")
    return argv[2], argv[3:]


def health_argv(service: Mapping[str, Any]) -> list[str] | None:
    test = (service.get("healthcheck") or {}).get("test")
    if not test:
        return None
    if test[0] == "CMD":
        return [str(a) for a in test[1:]]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", str(test[1])]
    return [str(a) for a in test]


def replicas(service: Mapping[str, Any]) -> int:
    return int((service.get("deploy") or {}).get("replicas", 1))


def start_order(compose: Mapping[str, Any]) -> list[str]:
    """Service names, each after what it depends on (profiles left out)."""
    services = {n: s for n, s in compose["services"].items() if not s.get("profiles")}
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in seen:
            raise ValueError(f"depends_on cycle through {name}")
        for dep in services[name].get("depends_on") or []:
            visit(dep, (*seen, name))
        order.append(name)

    for name in services:
        visit(name, ())
    return order


def depends_healthy(service: Mapping[str, Any]) -> list[str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return []
    return [n for n, d in deps.items() if (d or {}).get("condition") == "service_healthy"]


# --- checking it ------------------------------------------------------------------------
def _settings_read(var: str) -> bool:
    """Does Settings read this variable? (Setting it changes the settings.)"""
    base = Settings.from_env({})
    for probe in ("7", "probe"):
        try:
            if Settings.from_env({var: probe}) != base:
                return True
        except ValueError:
            return True  # read, and refused a value of the wrong type
    return False


def _options_read(module: str, var: str) -> bool:
    """Whether ``var`` changes the defaults of ``python -m module``'s options."""
    try:
        options = importlib.import_module(f"{module}.__main__").options
    except (ImportError, AttributeError):
        return False
    saved = os.environ.get(var)
    try:
        os.environ.pop(var, None)
        before = vars(options().parse_args([]))
        os.environ[var] = "7"
        after = vars(options().parse_args([]))
    finally:
        os.environ.pop(var, None)
        if saved is not None:
            os.environ[var] = saved
    return before != after


def _nats_config_vars() -> set[str]:
    text = "\n".join(p.read_text() for p in (REPO / "deploy" / "nats").glob("*.conf"))
    return set(re.findall(r"\$([A-Z][A-Z0-9_]*)", text))


def variable_known(var: str, service_name: str, module: str | None) -> bool:
    if var in OTEL_VARS:
        return True
    if service_name == NATS_SERVICE:
        return var in _nats_config_vars()
    if not var.startswith("SLUICE_"):
        return False
    if _settings_read(var):
        return True
    if module == "services.ui" and var in UI_ACCESS_VARS:
        return True  # the UI's login and read-only mode (services.ui._auth.Access.from_env)
    if module == "services.runner" and var in FLOW_CREDENTIALS:
        return True  # what flow code gets as its credentials (engine.runner._credentials)
    return module is not None and _options_read(module, var)


def _module_runs(module: str) -> bool:
    try:
        return importlib.util.find_spec(f"{module}.__main__") is not None
    except ModuleNotFoundError:
        return False


def _dockerfile_sources(dockerfile: Path, context: Path) -> list[str]:
    missing = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--") for p in parts[1:2]):
            for source in parts[1:-1]:
                if not (context / source).exists():
                    missing.append(f"{dockerfile.name}: COPY {source}: no such file")
    return missing


def problems(compose: Mapping[str, Any]) -> list[str]:
    """Every module, variable or file named in the compose file that does not exist."""
    out: list[str] = []
    env_for_check = {f"SLUICE_{r.upper()}_PASSWORD": "x" for r in ROLES}
    for name, service in compose["services"].items():
        where = f"service {name}"
        mapping = mounts(service)
        for volume in service.get("volumes") or []:
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")) and not (REPO / source).exists():
                out.append(f"{where}: volume source {source} does not exist")
        build = service.get("build")
        if isinstance(build, dict):
            context = REPO / build.get("context", ".")
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                out.append(f"{where}: {dockerfile} does not exist")
            else:
                out += [f"{where}: {p}" for p in _dockerfile_sources(dockerfile, context)]
        module = None
        commands = []
        if is_sluice(service):
            commands.append(("command", [str(a) for a in service.get("command") or []]))
            if (check := health_argv(service)) is not None:
                commands.append(("healthcheck", check))
        for label, argv in commands:
            try:
                mod, args = python_module(argv)
            except ValueError as exc:
                out.append(f"{where}: {label}: {exc}")
                continue
            if label == "command":
                module = mod
            if not _module_runs(mod):
                out.append(f"{where}: {label}: no module {mod} to run")
            for arg in args:
                path = local_path(arg, mapping)
                if path is not None and not path.exists():
                    out.append(f"{where}: {label}: {arg} ({path}) does not exist")
        if name == NATS_SERVICE:
            argv = [str(a) for a in service.get("command") or []]
            for flag, value in itertools.pairwise(argv):
                if flag in ("-c", "--config"):
                    path = local_path(value, mapping)
                    if path is None or not path.is_file():
                        out.append(f"{where}: config {value} is not a file in the repository")
        if not (is_sluice(service) or name == NATS_SERVICE):
            continue  # a third-party image: its variables are its own business
        for var in service_env(service, env_for_check):
            if not variable_known(var, name, module):
                out.append(f"{where}: variable {var} is read by nothing")
    return out


# --- running it -------------------------------------------------------------------------
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
