"""Why a run has not started yet, in words a user can act on.

Read-only: looks at the run, its deployment, the deployment's concurrency
slots and the live runner heartbeats. Used by ``sluice flow-run inspect``.
"""

from __future__ import annotations

import contextlib

import msgspec
import nats.errors
import nats.js.errors

from engine.client import Client
from shared import names
from shared.clock import Clock, SystemClock
from shared.errors import SluiceError
from shared.messages import RunnerStatus, SlotLease
from shared.models import FlowRun
from shared.slots import STREAM, lease_from, slot_subject
from shared.states import StateType

__all__ = ["why_not_started"]


async def _live_runners(client: Client) -> list[RunnerStatus]:
    kv = await client.nc.jetstream().key_value(names.HEARTBEATS_BUCKET)
    watcher = await kv.watchall()
    out = []
    try:
        while True:
            entry = await watcher.updates(timeout=2.0)
            if entry is None:
                break
            if entry.value and entry.operation is None:
                with contextlib.suppress(msgspec.DecodeError):
                    out.append(msgspec.json.decode(entry.value, type=RunnerStatus))
    except nats.errors.TimeoutError:
        pass
    finally:
        await watcher.stop()
    return out


async def _slot_holders(client: Client, deployment_id: str, limit: int) -> list[SlotLease]:
    js = client.nc.jetstream()
    held = []
    for n in range(limit):
        try:
            msg = await js.get_last_msg(STREAM, slot_subject(deployment_id, n))
        except nats.js.errors.NotFoundError:
            continue
        if (lease := lease_from(msg)) is not None:
            held.append(lease)
    return held


async def why_not_started(client: Client, run: FlowRun, clock: Clock | None = None) -> str | None:
    """A sentence saying what the run waits for, or None if it is not waiting."""
    if run.state.type is not StateType.SCHEDULED:
        return None
    now = (clock or SystemClock()).now()
    if run.expected_start_time > now:
        wait = run.expected_start_time - now
        when = f"{run.expected_start_time:%Y-%m-%d %H:%M:%S} UTC"
        return f"its start time has not come: {when} (in {_human(wait.total_seconds())})"
    if run.agentless:
        return "it is executed by the process that created it (--execute), not by a runner"
    if run.deployment_id is None:
        return "it has no deployment, so no runner can start it; it runs where its flow is called"
    try:
        deployment = await client.read_deployment(id=run.deployment_id)
    except SluiceError:
        return "its deployment no longer exists, so no runner will start it"
    if deployment.concurrency_limit:
        held = await _slot_holders(client, deployment.id, deployment.concurrency_limit)
        if len(held) >= deployment.concurrency_limit:
            holders = ", ".join(h.flow_run_id[:8] for h in held)
            return (
                f"waiting for a concurrency slot of {deployment.full_name}: "
                f"{len(held)} of {deployment.concurrency_limit} in use (by {holders})"
            )
    runners = await _live_runners(client)
    if not runners:
        return "no runner is alive; start one with `python -m services.runner` (or `sluice dev`)"
    if all(len(r.runs) >= r.limit > 0 for r in runners):
        return f"every live runner is full ({', '.join(r.runner for r in runners)})"
    return (
        f"no live runner has taken it yet; check that one serves queue {run.queue!r} "
        f"or deployment {deployment.full_name}"
    )


def _human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
