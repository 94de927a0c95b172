"""The ``sluice.deployment.slots.in_use`` gauge: concurrency slots held, per deployment.

Slots are leases in the ``concurrency_slots`` bucket (:mod:`._slots`); the
gauge counts the live ones of every deployment with a limit, every few
seconds, and only while metrics are on (otherwise the task only sleeps). The
exporter's thread reads the last count; it never waits on NATS.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import anyio
import nats.errors

from shared import telemetry

from ._slots import Slots
from ._store import DeploymentStore

__all__ = ["SlotGauge"]

log = logging.getLogger("sluice.orchestrator")


class SlotGauge:
    def __init__(self, deployments: DeploymentStore, slots: Slots, every: float = 5.0) -> None:
        self._deployments = deployments
        self._slots = slots
        self._every = every
        self._values: list[tuple[float, Mapping[str, str]]] = []

    def values(self) -> list[tuple[float, Mapping[str, str]]]:
        return list(self._values)

    async def run(self) -> None:
        """Refresh the counts until cancelled (a no-op while metrics are off)."""
        while True:
            if telemetry.metrics_enabled():
                try:
                    await self.refresh()
                except (nats.errors.Error, TimeoutError) as exc:  # the next pass tries again
                    log.debug("counting concurrency slots failed: %s", exc)
            await anyio.sleep(self._every)

    async def refresh(self) -> None:
        values: list[tuple[float, Mapping[str, str]]] = []
        for deployment in await self._deployments.all():
            limit = deployment.concurrency_limit
            if not limit:
                continue
            held = await self._slots.holders(deployment.id, limit)
            values.append((float(len(held)), {"deployment": deployment.full_name}))
        self._values = values
