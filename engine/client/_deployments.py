"""The client's requests about deployments: register, read, list, pause, resume, delete."""

from __future__ import annotations

from collections.abc import Iterable

from engine.client._connection import _Connection
from shared import names
from shared.messages import (
    Deleted,
    DeploymentPage,
    DeploymentRef,
    ListDeployments,
    RegisterDeployment,
)
from shared.models import Deployment

__all__ = ["_DeploymentRequests"]


class _DeploymentRequests(_Connection):
    """The deployment half of :class:`~engine.client.Client`, which inherits it."""

    async def register_deployment(self, deployment: RegisterDeployment) -> Deployment:
        return await self._request(names.DEPLOYMENT_REGISTER, deployment, Deployment)

    async def read_deployment(
        self, name: str | None = None, *, id: str | None = None
    ) -> Deployment:
        """By ``flow/deployment``, by id, or by flow name when it has one deployment."""
        return await self._request(
            names.DEPLOYMENT_READ, DeploymentRef(id=id, name=name), Deployment
        )

    async def list_deployments(
        self,
        *,
        flow_name: str | None = None,
        tags: Iterable[str] = (),
        limit: int = 100,
        offset: int = 0,
        all_versions: bool = False,
    ) -> DeploymentPage:
        req = ListDeployments(
            flow_name=flow_name,
            tags=list(tags),
            limit=limit,
            offset=offset,
            all_versions=all_versions,
        )
        return await self._request(names.DEPLOYMENT_LIST, req, DeploymentPage)

    async def pause_deployment(
        self, name: str | None = None, *, id: str | None = None
    ) -> Deployment:
        return await self._request(
            names.DEPLOYMENT_PAUSE, DeploymentRef(id=id, name=name), Deployment
        )

    async def resume_deployment(
        self, name: str | None = None, *, id: str | None = None
    ) -> Deployment:
        return await self._request(
            names.DEPLOYMENT_RESUME, DeploymentRef(id=id, name=name), Deployment
        )

    async def delete_deployment(self, name: str | None = None, *, id: str | None = None) -> Deleted:
        return await self._request(
            names.DEPLOYMENT_DELETE, DeploymentRef(id=id, name=name), Deleted
        )
