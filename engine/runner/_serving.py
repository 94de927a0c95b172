"""What a Runner serves: registering deployments and flows, serving registered ones.

Deployments made from a flow here (``aadd_flow``, ``serve``) without a
``queue`` go on a queue of this runner's own (:func:`private_queue`): the
runner that serves them is the one that runs them, and runners serving a
shared queue (``sluice dev``'s, ``python -m services.runner --queue``) never
take their runs. A deployment given a queue on purpose is offered there.

Mixed into :class:`~engine.runner._runner.Runner`; uses its state, declared here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from engine.client import Client
from engine.deployments import RunnerDeployment
from shared.models import Deployment
from shared.settings import Settings

if TYPE_CHECKING:
    from engine.flows import Flow

__all__ = ["private_queue"]


def private_queue(runner_name: str) -> str:
    """The dispatch queue of the deployments only ``runner_name`` runs."""
    return "runner-" + re.sub(r"[^A-Za-z0-9_-]", "_", runner_name)


class _Serving:
    name: str
    limit: int
    settings: Settings
    _client: Client | None
    _deployments: dict[str, Deployment]
    _served: list[str]
    _held: dict[str, int]
    _active: dict[str, Any]
    _started: bool

    async def _connected(self) -> Client:
        if self._client is None:
            client = Client(self.settings)
            await client.__aenter__()
            self._client = client
        return self._client

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Client]:
        """The running runner's connection, or a connection for this call only."""
        if self._client is not None:
            yield self._client
            return
        async with Client(self.settings) as client:
            yield client

    @property
    def started(self) -> bool:
        """True while :meth:`start` runs."""
        return self._started

    async def aadd_deployment(self, deployment: RunnerDeployment) -> str:
        """Register the deployment with the stack and serve it; returns its id.

        A deployment without a ``queue`` goes on this runner's own queue
        (:func:`private_queue`): only this runner takes its runs.
        """
        if deployment.queue is None:
            deployment = dataclasses.replace(deployment, queue=private_queue(self.name))
        async with self._session() as client:
            stored = await deployment.register(client)
        self._deployments[stored.id] = stored
        if stored.id not in self._served:
            self._served.append(stored.id)
        return stored.id

    async def aserve_deployment(self, ref: str) -> str:
        """Serve an already registered deployment (``flow/name``, a bare flow name, or an id)."""
        async with self._session() as client:
            try:
                uuid.UUID(ref)
                stored = await client.read_deployment(id=ref)
            except ValueError:
                stored = await client.read_deployment(ref)
        self._deployments[stored.id] = stored
        if stored.id not in self._served:
            self._served.append(stored.id)
        return stored.id

    async def aadd_flow(self, flow: Flow[Any, Any], name: str | None = None, **kwargs: Any) -> str:
        """Serve ``flow`` as a deployment named ``name`` (default: the runner's
        name); ``kwargs`` are ``flow.to_deployment`` arguments. Returns its id."""
        deployment = RunnerDeployment.from_flow(flow, name or self.name, **kwargs)
        return await self.aadd_deployment(deployment)

    @property
    def in_progress(self) -> int:
        return len(self._active)

    def has_slots_available(self) -> bool:
        """True when fewer than ``limit`` runs are in progress here."""
        return len(self._held) < self.limit
