"""``DockerFlowRunner``: start each flow run in a new Docker container.

The runner pulls the image if its policy says so, creates a container running
``python -m engine`` with the run's environment, connects it to any extra
networks, and starts it; the handle it returns waits for the container's exit
code and stops it (``docker stop``: SIGTERM, the grace period, SIGKILL). The
Engine API conversation is the ``docker`` SDK's (the ``sluice[docker]`` extra),
in :mod:`engine.runner._docker_engine`; this module holds the options and the
pure pieces.

Choices a user should know about:

* **Which engine.** ``docker_host``, else ``$DOCKER_HOST`` (with
  ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH`` for TLS), else the Docker
  context named by ``$DOCKER_CONTEXT`` or current in ``~/.docker/config.json``,
  else the local socket. ``ssh://`` hosts go through the ``ssh`` command, as
  the Docker CLI's do. Registry credentials come from ``~/.docker/config.json``
  and its credential helpers, as ``docker pull`` finds them.
* **Image.** The default is :func:`default_image`, ``sluice:<installed
  version>``: the tag ``docker compose build`` gives the project's image, and
  the one docs/docker.md tells you to build. A stock ``python`` image would not
  do, since ``python -m engine`` needs Sluice inside the container.
* **Code.** With ``mount_code`` (the default), a deployment's folder that
  exists on the runner's host is bind-mounted read-only at the same path and
  used as the working directory, so the entrypoint resolves as it does for a
  subprocess. Turn it off when the image carries the code at that path.
* **Reaching NATS.** Inside a container 127.0.0.1 is the container itself.
  A ``SLUICE_NATS_URL`` naming a loopback host is rewritten to
  ``host.docker.internal``, which the container maps to the host's gateway
  (Docker 20.10+); nats-server must then listen on that address too. With
  ``networks=["host"]`` nothing is rewritten.
* **Lifetime.** The container is not tied to the runner's pid (that lifeline is
  for local processes, and a pid means nothing in another pid namespace). The
  runner stops its containers when it shuts down or its lease lapses, and a
  restarted runner stops and removes what its previous instance left, found by
  the ``sluice.runner-name`` label. ``auto_remove`` (the default) removes a
  container once its exit code is read.
* **Signals.** Containers run with Docker's init, so ``docker stop``'s SIGTERM
  reaches Python instead of being ignored by PID 1.

File paths in the environment (NATS credentials, TLS files, ``SLUICE_HOME``)
are passed as they are: mount them with ``volumes`` when the run needs them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import msgspec

from engine.runner._fence import LEASE_FILE_ENV
from engine.runner._lifeline import LIFELINE_ENV
from engine.runner._subprocess import FlowRunProcess, StartFailed
from shared.models import Deployment, FlowRun, Infrastructure

__all__ = [
    "HOST_GATEWAY",
    "RUNNER_LABEL",
    "DockerFlowRunner",
    "DockerOptions",
    "container_name",
    "container_request",
    "default_image",
    "needs_pull",
    "rewrite_loopback",
    "split_image",
]

PullPolicy = Literal["IF_NOT_PRESENT", "ALWAYS", "NEVER"]
HOST_GATEWAY = "host.docker.internal"
#: The label naming the runner that started a container; how a restarted
#: runner finds what its previous instance left running.
RUNNER_LABEL = "sluice.runner-name"
RUN_LABEL = "sluice.flow-run-id"
_LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
_MEMORY = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)


class DockerOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The Docker-specific settings, as stored in ``Infrastructure.options``.

    Unknown keys are ignored, so a deployment written by a newer Sluice still starts.
    """

    image: str | None = None
    volumes: list[str] = []
    networks: list[str] = []
    labels: dict[str, str] = {}
    auto_remove: bool = True
    image_pull_policy: PullPolicy = "IF_NOT_PRESENT"
    stream_output: bool = True
    docker_host: str | None = None
    mount_code: bool = True
    mem_limit: str | None = None
    cpus: float | None = None


@dataclass
class DockerFlowRunner:
    """Run each flow run in a new container of ``image`` (see the module docstring).

    ``image`` defaults to :func:`default_image`; the pull policy decides whether
    to pull it first (``IF_NOT_PRESENT``: only when the engine does not have
    it; ``ALWAYS``; ``NEVER``: fail if absent). ``volumes`` are Docker bind
    specs (``/host/path:/container/path[:ro]`` or ``volume-name:/path``); the
    first of ``networks`` is the container's network mode and the rest are
    connected before it starts. ``mem_limit`` (``"512m"``, ``"2g"``) and
    ``cpus`` (``1.5``) cap the container; a run over its memory limit ends
    Crashed with exit code 137. Raises ValueError for an unknown pull policy,
    a volume without a target, or a malformed limit.
    """

    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    auto_remove: bool = True
    image_pull_policy: PullPolicy = "IF_NOT_PRESENT"
    stream_output: bool = True
    docker_host: str | None = None
    mount_code: bool = True
    mem_limit: str | None = None
    cpus: float | None = None
    type: str = "docker"

    def __post_init__(self) -> None:
        if self.image_pull_policy not in ("IF_NOT_PRESENT", "ALWAYS", "NEVER"):
            raise ValueError(
                f"image_pull_policy must be IF_NOT_PRESENT, ALWAYS or NEVER, "
                f"not {self.image_pull_policy!r}"
            )
        for volume in self.volumes:
            source, _, target = volume.partition(":")
            if not source or not target:
                raise ValueError(f"a volume is SOURCE:TARGET[:MODE], not {volume!r}")
        if self.mem_limit is not None and not _MEMORY.match(str(self.mem_limit)):
            raise ValueError(f"mem_limit is a size such as '512m' or '2g', not {self.mem_limit!r}")
        if self.cpus is not None and not self.cpus > 0:
            raise ValueError(f"cpus must be more than 0, not {self.cpus!r}")

    @classmethod
    def from_infrastructure(cls, infra: Infrastructure) -> DockerFlowRunner:
        """The runner a stored ``docker`` infrastructure describes. Raises StartFailed."""
        try:
            options = msgspec.convert(infra.options, DockerOptions)
            return cls(env=dict(infra.env), **msgspec.structs.asdict(options))
        except (msgspec.ValidationError, ValueError) as exc:
            raise StartFailed(f"the deployment's docker options are invalid: {exc}") from exc

    def to_infrastructure(self) -> Infrastructure:
        names = DockerOptions.__struct_fields__
        options = DockerOptions(**{name: getattr(self, name) for name in names})
        return Infrastructure(
            type=self.type, env=dict(self.env), options=msgspec.to_builtins(options)
        )

    async def start(
        self, run: FlowRun, deployment: Deployment | None, env: Mapping[str, str]
    ) -> FlowRunProcess:
        """Pull (per policy), create and start the run's container.

        Raises StartFailed with the engine's reason (or a missing ``docker``
        package). A container created but not started is removed again.
        """
        engine = _engine_module()
        request = container_request(run, deployment, env, self)
        return await engine.start_container(self, request, default=self.image is None)

    async def stop_leftovers(
        self, runner_name: str, *, quiet: bool = False
    ) -> dict[str, list[str]]:
        """Stop and remove the containers a previous ``runner_name`` left on this
        runner's engine: ``{run id: [container idents]}``. Never raises; an
        engine that cannot be reached yields nothing (and a warning unless ``quiet``)."""
        try:
            engine = _engine_module()
        except StartFailed:
            return {}
        return await engine.stop_leftovers(self.docker_host, runner_name, quiet=quiet)


def _engine_module() -> Any:
    import importlib

    try:
        return importlib.import_module("engine.runner._docker_engine")
    except ImportError as exc:
        raise StartFailed(
            f"DockerFlowRunner needs the docker package ({exc}); "
            "install it with: pip install 'sluice[docker]'"
        ) from exc


# --- pure pieces ------------------------------------------------------------------------
def default_image() -> str:
    """``sluice:<installed version>`` (``+`` and other characters a tag forbids become ``-``)."""
    try:
        version = metadata.version("sluice")
    except metadata.PackageNotFoundError:
        version = "latest"
    return f"sluice:{re.sub(r'[^A-Za-z0-9_.-]', '-', version)[:128]}"


def split_image(image: str) -> tuple[str, str]:
    """``(repository, tag or digest)`` for a pull; no tag means ``latest``."""
    if "@" in image:
        repository, _, digest = image.partition("@")
        return repository, digest
    repository, colon, tag = image.rpartition(":")
    if colon and "/" not in tag:  # not the port of a registry such as localhost:5000/img
        return repository, tag
    return image, "latest"


def needs_pull(policy: PullPolicy, present: bool) -> bool:
    """Whether to pull before creating the container."""
    return policy == "ALWAYS" or (policy == "IF_NOT_PRESENT" and not present)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def rewrite_loopback(urls: str) -> str:
    """Each URL of a comma-separated list with a loopback host moved to ``host.docker.internal``."""
    from urllib.parse import urlsplit, urlunsplit

    out = []
    for url in urls.split(","):
        parts = urlsplit(url.strip())
        if "://" in url and parts.hostname and _is_loopback(parts.hostname):
            userinfo, at, _ = parts.netloc.rpartition("@")
            port = f":{parts.port}" if parts.port else ""
            parts = parts._replace(netloc=f"{userinfo}{at}{HOST_GATEWAY}{port}")
            url = urlunsplit(parts)
        out.append(url)
    return ",".join(out)


def container_name(run: FlowRun, env: Mapping[str, str]) -> str:
    """``sluice-<run name>-<id prefix>-<attempt>``: readable in ``docker ps``, unique per claim."""
    attempt = env.get("SLUICE_FLOW_RUN_ATTEMPT") or str(run.attempt)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name).strip("-._")[:40] or "run"
    return f"sluice-{slug}-{run.id[:8]}-{attempt}"


def container_request(
    run: FlowRun, deployment: Deployment | None, env: Mapping[str, str], runner: DockerFlowRunner
) -> dict[str, Any]:
    """The keyword arguments of the SDK's ``containers.create`` for ``run``.

    Environment: the runner's, then the deployment's, then the run's (``env``,
    which wins), without the lifeline's runner pid (a pid of the runner's
    namespace means nothing inside the container) or the lease file (a path on
    the runner's host): the runner fences a container itself, by stopping it. Pure apart from asking
    whether the deployment's folder exists here (``mount_code``).
    """
    environment = {**runner.env}
    if deployment is not None:
        environment.update(deployment.infrastructure.env)
    environment.update(env)
    for name in (*LIFELINE_ENV, LEASE_FILE_ENV):
        environment.pop(name, None)
    network_mode = runner.networks[0] if runner.networks else None
    request: dict[str, Any] = {
        "image": runner.image or default_image(),
        "command": ["python", "-m", "engine"],
        "name": container_name(run, env),
        "labels": _labels(run, deployment, runner, env),
        "volumes": list(runner.volumes),
        "init": True,
        "detach": True,
        "tty": False,
        "stdin_open": False,
    }
    nats_url = environment.get("SLUICE_NATS_URL")
    if nats_url and network_mode != "host":
        rewritten = rewrite_loopback(nats_url)
        if rewritten != nats_url:
            environment["SLUICE_NATS_URL"] = rewritten
            request["extra_hosts"] = {HOST_GATEWAY: "host-gateway"}
    if network_mode:
        request["network_mode"] = network_mode
    if runner.mem_limit is not None:
        request["mem_limit"] = runner.mem_limit
    if runner.cpus is not None:
        request["nano_cpus"] = round(runner.cpus * 1e9)
    request["environment"] = environment
    code = deployment.path if deployment is not None else None
    if runner.mount_code and code and Path(code).is_dir():
        request["volumes"].append(f"{code}:{code}:ro")
        request["working_dir"] = code
    return request


def _labels(
    run: FlowRun,
    deployment: Deployment | None,
    runner: DockerFlowRunner,
    env: Mapping[str, str],
) -> dict[str, str]:
    labels = {**runner.labels, RUN_LABEL: run.id, "sluice.flow-run-name": run.name}
    labels["sluice.flow-name"] = run.flow_name
    deployment_id = deployment.id if deployment is not None else run.deployment_id
    if deployment_id:
        labels["sluice.deployment-id"] = deployment_id
    if deployment is not None:
        labels["sluice.deployment-name"] = deployment.full_name
    if runner_name := env.get("SLUICE_RUNNER_NAME"):
        labels[RUNNER_LABEL] = runner_name
    return labels
