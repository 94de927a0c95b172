"""Deployment triggers: a run reaching a state starts a run of another deployment.

``matches`` is the pure rule; ``Triggers`` applies it to each run event the
scheduler follows and creates the triggered runs through ``flowrun.create``
with the idempotency key ``trigger:<deployment>:<n>:<run>:<state>``, so a
replayed event, a restart or two schedulers never start one twice.
"""

from __future__ import annotations

import logging

from engine.client import Client
from shared.errors import SluiceError
from shared.models import Deployment, FlowRun, FlowRunTrigger

from ._view import DeploymentView

log = logging.getLogger("sluice.scheduler.triggers")


def matches(trigger: FlowRunTrigger, run: FlowRun) -> bool:
    """Does this run's current state fire the trigger?"""
    if not trigger.enabled:
        return False
    if trigger.deployment is not None and run.deployment_name != trigger.deployment:
        return False
    if trigger.flow_name is not None and run.flow_name != trigger.flow_name:
        return False
    if trigger.deployment is None and trigger.flow_name is None:
        return False
    wanted = {s.upper() for s in trigger.states} | set(trigger.states)
    return run.state.type.value in wanted or run.state.name in wanted


def fired(deployments: list[Deployment], run: FlowRun) -> list[tuple[Deployment, int]]:
    """The (deployment, trigger index) pairs this run's state fires."""
    return [
        (d, i)
        for d in deployments
        if not d.paused and d.id != run.deployment_id  # a deployment never triggers itself
        for i, trigger in enumerate(d.triggers)
        if matches(trigger, run)
    ]


class Triggers:
    def __init__(self, client: Client, view: DeploymentView) -> None:
        self._client = client
        self._view = view

    async def observe(self, run: FlowRun) -> None:
        triggered = [d for d in self._view.deployments.values() if d.triggers]
        for deployment, index in fired(triggered, run):
            newest = self._view.newest(deployment.full_name)
            if newest is not None and newest.id != deployment.id:
                continue  # only the newest version of a name reacts
            key = f"trigger:{deployment.id}:{index}:{run.id}:{run.state.name}"
            try:
                created = await self._client.create_flow_run(
                    deployment_id=deployment.id,
                    parameters=deployment.triggers[index].parameters or None,
                    idempotency_key=key,
                    tags=["triggered"],
                )
            except SluiceError as exc:
                log.warning("trigger of %s failed: %s", deployment.full_name, exc.message)
                continue
            log.info(
                "run %s (%s) reached %s: started %s of %s",
                run.name,
                run.id,
                run.state.name,
                created.name,
                deployment.full_name,
            )
