"""Turning a flow into a deployment: ``flow.to_deployment(...)`` and ``RunnerDeployment``.

A deployment is what the stack stores to run a flow later and elsewhere: its
name, where its code is (an entrypoint relative to a folder), default
parameters with their JSON schema, schedules, tags, a concurrency limit, and
the flow runner to start it in. ``RunnerDeployment`` holds that on the
client side until a :class:`~engine.runner.Runner` (or ``serve``) registers it.

A schedule may be given as the seeds write it, a dict with one kind key
(``{"cron": "0 * * * *", "timezone": "Europe/Paris"}``, ``{"interval": 60}``,
``{"rrule": ...}``); it is checked here, and a mistake is a ValueError that
names the field.

A spec file (:func:`load_specs`) declares deployments by creating them:
every ``DeploymentSpec(...)`` or ``RunnerDeployment`` made while the file is
imported counts once, assigned to a name or written as a bare expression.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from shared.messages import RegisterDeployment
from shared.models import (
    Deployment,
    DeploymentSchedule,
    FlowRunTrigger,
)

if TYPE_CHECKING:
    from engine.client import Client
    from engine.flows import Flow
    from engine.runner._subprocess import FlowRunner

from engine._deployment_parts import build_schedules, entrypoint_of, parse_source

__all__ = [
    "DeploymentSpec",
    "RunnerDeployment",
    "build_schedules",
    "entrypoint_of",
    "load_specs",
    "parse_source",
]


def _universal() -> FlowRunner:
    # Deferred: flow runners belong to the runner layer above this module; a
    # deployment only needs the default one when it is built.
    from engine.runner._subprocess import UniversalFlowRunner

    return UniversalFlowRunner()


@dataclass
class RunnerDeployment:
    """A deployment of a flow, ready to register with the stack."""

    name: str
    flow_name: str
    entrypoint: str
    path: str
    parameters: dict[str, Any] = field(default_factory=dict)
    parameter_schema: dict[str, Any] = field(default_factory=dict)
    enforce_parameter_schema: bool = True
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    version: str | None = None
    schedules: list[DeploymentSchedule] = field(default_factory=list)
    concurrency_limit: int | None = None
    flow_runner: FlowRunner = field(default_factory=_universal)
    paused: bool = False
    queue: str | None = None
    """The dispatch queue its runs are offered on (runners serve queues).
    None: only the runner that serves it runs it (a queue of that runner's
    own); registered without a runner, ``default``."""
    triggers: list[FlowRunTrigger] = field(default_factory=list)
    """Start a run when runs of other deployments reach given states."""
    bundle: bool = False
    """Ship ``path`` (the project folder) in the stack's bundle store when
    registered, so runners on any host run this code without a copy of it."""
    source: str | None = None
    """``git+URL@REF``: runners fetch the code from git at each run; the
    entrypoint is relative to the repository's top."""

    def __post_init__(self) -> None:
        _declared(self)

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    @classmethod
    def from_flow(
        cls,
        flow: Flow[Any, Any],
        name: str,
        *,
        interval: float | timedelta | Iterable[float | timedelta] | None = None,
        cron: str | Iterable[str] | None = None,
        rrule: str | Iterable[str] | None = None,
        schedule: Any = None,
        timezone: str = "UTC",
        parameters: dict[str, Any] | None = None,
        description: str | None = None,
        tags: Iterable[str] = (),
        version: str | None = None,
        enforce_parameter_schema: bool = True,
        concurrency_limit: int | None = None,
        flow_runner: FlowRunner | None = None,
        entrypoint: str | None = None,
        path: str | os.PathLike[str] | None = None,
        paused: bool = False,
        queue: str | None = None,
        triggers: Iterable[FlowRunTrigger] = (),
        bundle: bool = False,
        source: str | None = None,
    ) -> RunnerDeployment:
        if not name or "/" in name or "%" in name:
            raise ValueError(f"a deployment name must be non-empty without '/' or '%': {name!r}")
        if source is not None:
            parse_source(source)  # a bad form or a password in the URL fails here
            if bundle:
                raise ValueError("give a deployment bundle=True or a git source, not both")
        if path is not None:
            base = Path(path)
        elif bundle and (flow_file := inspect.getsourcefile(flow.fn)) is not None:
            base = Path(flow_file).resolve().parent  # a bundle holds the flow file's folder
        else:
            base = Path.cwd()
        return cls(
            name=name,
            flow_name=flow.name,
            entrypoint=entrypoint or entrypoint_of(flow, base),
            path=str(base.resolve()),
            parameters=dict(parameters or {}),
            parameter_schema=flow.parameter_schema(),
            enforce_parameter_schema=enforce_parameter_schema,
            description=description or flow.description,
            tags=list(tags),
            version=version or flow.version,
            schedules=build_schedules(
                interval=interval, cron=cron, rrule=rrule, schedule=schedule, timezone=timezone
            ),
            concurrency_limit=concurrency_limit,
            flow_runner=flow_runner or _universal(),
            paused=paused,
            queue=queue,
            triggers=list(triggers),
            bundle=bundle,
            source=source,
        )

    async def register(self, client: Client) -> Deployment:
        """Store this deployment with the stack and return it as stored.

        With ``bundle``, the project folder (``path``) is packed and stored
        first (unchanged code is not stored twice), and the deployment names
        its digest. Raises :class:`~engine.exceptions.BundleError` when the
        folder cannot be bundled (too large, a link out of it).
        """
        request = self.to_request()
        if self.bundle:
            from engine._stack.bundles import upload
            from shared.settings import Settings

            limit = int(Settings.from_env().bundle_limit_mb * 1024 * 1024)
            stored = await upload(client.nc.jetstream(), Path(self.path), limit=limit)
            request = msgspec.structs.replace(request, bundle=stored)
        return await client.register_deployment(request)

    def to_request(self) -> RegisterDeployment:
        return RegisterDeployment(
            name=self.name,
            flow_name=self.flow_name,
            version=self.version,
            entrypoint=self.entrypoint,
            path=self.path,
            description=self.description,
            tags=self.tags,
            parameters=self.parameters,
            parameter_schema=self.parameter_schema,
            enforce_parameter_schema=self.enforce_parameter_schema,
            schedules=self.schedules,
            paused=self.paused,
            concurrency_limit=self.concurrency_limit,
            infrastructure=self.flow_runner.to_infrastructure(),
            queue=self.queue or "default",
            triggers=self.triggers,
            source=self.source,
        )


@dataclass
class DeploymentSpec:
    """A deployment declared in a file, registered with ``sluice deployment create FILE``.

    Give the flow object (``flow=``) or where it lives (``flow_location=``, a
    file path relative to the spec file, with ``:name`` when the file holds
    more than one flow).
    """

    name: str
    flow: Flow[Any, Any] | None = None
    flow_location: str | None = None
    flow_runner: FlowRunner | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    schedule: Any = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    version: str | None = None
    concurrency_limit: int | None = None
    bundle: bool = False
    """Ship the spec file's folder to runners through the stack's bundle store."""

    def __post_init__(self) -> None:
        _declared(self)

    def to_deployment(self, base: Path) -> RunnerDeployment:
        flow = self.flow if self.flow is not None else _load_flow(base, self.flow_location)
        return RunnerDeployment.from_flow(
            flow,
            self.name,
            schedule=self.schedule,
            parameters=self.parameters,
            tags=self.tags,
            description=self.description,
            version=self.version,
            concurrency_limit=self.concurrency_limit,
            flow_runner=self.flow_runner,
            path=base,
            bundle=self.bundle,
        )


#: While a spec file is imported: every spec and deployment it creates, in order.
_collecting: ContextVar[list[Any] | None] = ContextVar("sluice_spec_collecting", default=None)


def _declared(value: Any) -> None:
    found = _collecting.get()
    if found is not None:
        found.append(value)


def _import_file(path: Path) -> Any:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"_sluice_spec_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _load_flow(base: Path, location: str | None) -> Flow[Any, Any]:
    from engine.flows import Flow

    if not location:
        raise ValueError("a DeploymentSpec needs flow= or flow_location=")
    file, _, name = location.partition(":")
    module = _import_file((base / file).resolve())
    flows = {k: v for k, v in vars(module).items() if isinstance(v, Flow)}
    if name:
        found = flows.get(name) or next((f for f in flows.values() if f.name == name), None)
        if found is None:
            raise ValueError(f"{file} has no flow {name!r}; it has: {', '.join(flows) or 'none'}")
        return found
    if len(flows) != 1:
        raise ValueError(
            f"{file} holds {len(flows)} flows ({', '.join(flows) or 'none'}); name one as FILE:FLOW"
        )
    return next(iter(flows.values()))


def load_specs(path: str | os.PathLike[str]) -> list[RunnerDeployment]:
    """Every deployment a spec file declares, in the order it creates them.

    A ``DeploymentSpec(...)`` or ``RunnerDeployment`` created while the file
    is imported counts, whether assigned to a name or not, and each counts
    once; so does one the file only holds in a variable (made elsewhere).
    Deployments without a queue go on ``default``: a spec file's deployments
    are shared by every runner of the queue. Raises ValueError when the file
    is missing or declares nothing.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise ValueError(f"no such file: {path}")
    created: list[Any] = []
    token = _collecting.set(created)
    try:
        module = _import_file(file)
    finally:
        _collecting.reset(token)
    declared = created + [
        v for v in vars(module).values() if isinstance(v, DeploymentSpec | RunnerDeployment)
    ]
    out: list[RunnerDeployment] = []
    seen: set[int] = set()
    for value in declared:
        if id(value) in seen:
            continue
        seen.add(id(value))
        deployment = (
            value.to_deployment(file.parent) if isinstance(value, DeploymentSpec) else value
        )
        if deployment.queue is None:
            deployment = dataclasses.replace(deployment, queue="default")
        out.append(deployment)
    if not out:
        raise ValueError(f"{path} declares no DeploymentSpec")
    return out
