"""docker-compose.yml without Docker: read it and check it.

:func:`problems` lists every module, variable or file a compose service names
that does not exist. Paths inside the container map to the repository:
mounted folders to their source, and the image's working directory to the
repository root (deploy/Dockerfile copies the repository there).
``tests/local_stack.py`` runs what the file describes.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from engine.runner._credentials import FLOW_CREDENTIALS
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
