"""A client that drives runs through their states and retries through faults.

Each logical operation has an identity that survives retries: a create its
idempotency key, a transition its transition id. A request that got no
answer (StackUnavailable) is sent again, unchanged, until the stack answers;
so every operation happens exactly once however often the stack dies.
"""

from __future__ import annotations

import contextlib

import anyio

from engine.client import Client
from shared.errors import SluiceError, StackUnavailable
from shared.messages import Decision, ProposedState, ProposeReply
from shared.models import FlowRun
from shared.states import StateType

from ._history import History


class Driver:
    def __init__(self, client: Client, history: History, deployment: str) -> None:
        self.client = client
        self.history = history
        self.deployment = deployment
        self.done = 0
        #: Runs this driver holds a claim on (id -> attempt), renewed by :meth:`heartbeats`.
        self.held: dict[str, int] = {}

    async def heartbeats(self, interval: float = 5.0) -> None:
        """Renew the slot leases of the runs we hold, as a runner does; run in a task.

        A claim holder that stops renewing loses its slot when the lease runs
        out, so a driver that never heartbeats would let the checker see more
        Running runs than the limit after any slow spell.
        """
        while True:
            with contextlib.suppress(SluiceError):
                await self.client.heartbeat(
                    "driver", interval=interval, limit=0, runs=dict(self.held)
                )
            await anyio.sleep(interval / 5)

    async def create(self, key: str, **params: object) -> FlowRun:
        while True:
            try:
                return await self.history.call(
                    "create",
                    key,
                    lambda: self.client.create_flow_run(
                        self.deployment, parameters=params, idempotency_key=key
                    ),
                    lambda r: r.id,
                )
            except StackUnavailable:
                await anyio.sleep(0.1)

    async def propose(
        self, run_id: str, tid: str, type_: StateType, attempt: int | None = None
    ) -> ProposeReply:
        while True:
            try:
                reply = await self.history.call(
                    "propose",
                    tid,
                    lambda: self.client.propose_state(
                        run_id,
                        ProposedState(type=type_),
                        transition_id=tid,
                        attempt=attempt,
                        runner="driver" if type_ is StateType.PENDING else None,
                    ),
                )
            except StackUnavailable:
                await anyio.sleep(0.1)
                continue
            if reply.status is Decision.WAIT:  # a concurrency slot: ask again later
                await anyio.sleep(min(reply.delay_seconds or 0.2, 0.5))
                continue
            return reply

    async def lifecycle(self, key: str) -> FlowRun:
        """Create, claim, run and complete one run, as a runner and engine would."""
        run = await self.create(key)
        claim = await self.propose(run.id, f"{key}:pending", StateType.PENDING)
        assert claim.status is Decision.ACCEPT, (key, claim)
        self.held[run.id] = claim.attempt
        running = await self.propose(run.id, f"{key}:running", StateType.RUNNING, claim.attempt)
        assert running.status is Decision.ACCEPT, (key, running)
        final = await self.propose(run.id, f"{key}:completed", StateType.COMPLETED, claim.attempt)
        assert final.status is Decision.ACCEPT, (key, final)
        self.held.pop(run.id, None)
        self.done += 1
        return run
