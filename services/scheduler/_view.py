"""Which schedules are in force: the deployments bucket, as the scheduler sees it.

Owns the rule that decides whether a schedule creates runs: the deployment
is the newest version of its name (by creation time, then id, so every
scheduler agrees), it is not paused, and the schedule is active. Pure
bookkeeping: the watch that feeds it lives in ``_follow``.
"""

from __future__ import annotations

from shared.models import Deployment, DeploymentSchedule

from ._slots import schedule_hash

__all__ = ["DeploymentView", "Wanted"]

Wanted = dict[str, DeploymentSchedule]
"""Schedule digest -> the schedule, for the schedules in force of one deployment."""


class DeploymentView:
    def __init__(self) -> None:
        self.deployments: dict[str, Deployment] = {}
        self._names: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.deployments)

    def get(self, deployment_id: str) -> Deployment | None:
        return self.deployments.get(deployment_id)

    def newest(self, full_name: str) -> Deployment | None:
        versions = [self.deployments[i] for i in self._names.get(full_name, ())]
        return max(versions, key=lambda d: (d.created, d.id), default=None)

    def wanted(self, deployment_id: str) -> Wanted:
        deployment = self.deployments.get(deployment_id)
        if deployment is None or deployment.paused:
            return {}
        newest = self.newest(deployment.full_name)
        if newest is None or newest.id != deployment_id:
            return {}
        return {schedule_hash(item): item for item in deployment.schedules if item.active}

    def _name_of(self, deployment_id: str) -> str | None:
        found = self.deployments.get(deployment_id)
        return found.full_name if found else None

    def put(self, deployment_id: str, deployment: Deployment | None) -> set[str]:
        """Store a deployment (None: deleted); returns the ids whose schedules in
        force may have changed (every version of the names involved)."""
        old_name = self._name_of(deployment_id)
        names = {n for n in (old_name, deployment.full_name if deployment else None) if n}
        if old_name is not None:
            versions = self._names.get(old_name, set())
            versions.discard(deployment_id)
            if not versions:
                self._names.pop(old_name, None)
        if deployment is None:
            self.deployments.pop(deployment_id, None)
        else:
            self.deployments[deployment_id] = deployment
            self._names.setdefault(deployment.full_name, set()).add(deployment_id)
        return {deployment_id} | {i for n in names for i in self._names.get(n, ())}
