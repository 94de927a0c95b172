"""Flow-run handlers: create, propose a state, cancel, read.

Every write is a compare-and-set on the run's KV revision, and the write is
the run's event (``shared.runlog``); a write that makes a run due is followed
by its dispatch item, sent ahead of the reply and acknowledged in the
background (``_publish``). A create is answered only after the run is stored; with
an idempotency key, ``_keys`` makes sure the key names one run (the run's own
KV create is the check), so a crash in between is finished by the next
request with that key instead of leaving a second run.
"""

from __future__ import annotations

import random
import uuid

from shared import telemetry
from shared.clock import Clock, utc
from shared.errors import Conflict, FlowRunNotFound, MalformedRequest
from shared.messages import (
    CancelFlowRun,
    CreateFlowRun,
    Decision,
    Deleted,
    DeleteFlowRun,
    DeploymentRef,
    FlowRunRef,
    Heartbeat,
    HeartbeatReply,
    ProposedState,
    ProposeReply,
    ProposeState,
    RunnerStatus,
    SlotLease,
)
from shared.models import Deployment, FlowRun
from shared.states import TERMINAL_TYPES, State, StateDetails, StateType

from . import _params, rules
from ._deployments import Deployments
from ._keys import Keys
from ._measure import measure
from ._names import run_name
from ._publish import Publisher
from ._slots import SLOT_RETRY_SECONDS, Hold, Slots, ttl_seconds
from ._store import RecentRuns, RunStore, Stale, after_stale

CAS_ATTEMPTS = 50


def _declared_lost(run: FlowRun) -> bool:
    """Taken from its holder by someone else: released, or marked Crashed or
    Cancelled (a holder that reports Completed or Failed ends by itself)."""
    state = run.state.type
    if state is StateType.SCHEDULED:
        return run.runner is None
    return state in (StateType.CRASHED, StateType.CANCELLED)


class Runs:
    def __init__(
        self,
        runs: RunStore,
        keys: Keys,
        deployments: Deployments,
        publisher: Publisher,
        clock: Clock,
        slots: Slots,
        *,
        slot_lease: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self._runs = runs
        self._keys = keys
        self._deployments = deployments
        self._publisher = publisher
        self._clock = clock
        self._slots = slots
        self._slot_lease = slot_lease
        self._rng = rng or random.Random()
        self._recent = RecentRuns()

    # --- create -------------------------------------------------------------------
    async def create(self, req: CreateFlowRun) -> FlowRun:
        deployment = await self._deployment_for(req)
        if deployment is not None:
            flow_name, scope = deployment.flow_name, deployment.full_name
            parameters = _params.merge(deployment.parameters, req.parameters)
            _params.validate(deployment, parameters)
        else:
            assert req.flow_name is not None
            flow_name, scope = req.flow_name, f"flow:{req.flow_name}"
            parameters = dict(req.parameters or {})

        key = req.idempotency_key
        now = self._clock.now()
        start = utc(req.scheduled_start_time) if req.scheduled_start_time else now
        # The request's span (child of the creator's): kept, so a run started
        # later by the scheduler still belongs to the creator's trace.
        trace: dict[str, str] = {}
        if telemetry.enabled():
            trace = telemetry.inject_headers()
        run = FlowRun(
            id=str(uuid.uuid4()) if key is None else self._keys.run_id(scope, key),
            name=req.name or run_name(self._rng),
            flow_name=flow_name,
            deployment_id=deployment.id if deployment else None,
            deployment_name=deployment.full_name if deployment else None,
            deployment_version=deployment.version if deployment else None,
            parameters=parameters,
            tags=sorted({*(deployment.tags if deployment else ()), *req.tags}),
            idempotency_key=req.idempotency_key,
            parent_flow_run_id=req.parent_flow_run_id,
            queue=deployment.queue if deployment else "default",
            state=State(
                type=StateType.SCHEDULED,
                name="Scheduled",
                timestamp=now,
                details=StateDetails(scheduled_time=start),
            ),
            created=now,
            updated=now,
            expected_start_time=start,
            agentless=req.agentless,
            created_by_request=req.request_id,
            traceparent=trace.get("traceparent"),
            tracestate=trace.get("tracestate"),
        )
        if key is None:
            revision, created = await self._runs.create(run), True
        else:
            run, revision, created = await self._keys.store(run, scope, key)
        if telemetry.enabled():
            telemetry.set_attributes({"sluice.flow_run.id": run.id})
        if not created:  # the run the key names; its first request may have died before offering it
            await self._publisher.offer(run, self._clock.now())
            return run
        self._recent.remember(run, revision)
        await self._publisher.offer(run, now)
        telemetry.record_run_created(run.queue)
        return run

    async def _deployment_for(self, req: CreateFlowRun) -> Deployment | None:
        given = [x for x in (req.deployment, req.deployment_id, req.flow_name) if x]
        if len(given) != 1:
            raise MalformedRequest(
                "give exactly one of deployment (FLOW/DEPLOYMENT), deployment_id or flow_name"
            )
        if req.flow_name:
            return None
        return await self._deployments.find(
            DeploymentRef(id=req.deployment_id, name=req.deployment)
        )

    # --- reading ----------------------------------------------------------------
    async def read(self, req: FlowRunRef) -> FlowRun:
        found = await self._runs.get(req.id)
        if found is None:
            raise FlowRunNotFound(f"no flow run with id {req.id}")
        return found[0]

    # --- transitions --------------------------------------------------------------
    async def retry(self, req: ProposeState) -> ProposeReply:
        """``flowrun.retry``: a proposal that may reopen a finished run."""
        if not req.retry:
            raise MalformedRequest("flowrun.retry takes a proposal with retry: true")
        return await self.propose(req, may_retry=True)

    async def propose(self, req: ProposeState, *, may_retry: bool = False) -> ProposeReply:
        if req.retry and not may_retry:
            # Who asks is known only from the subject (NATS permissions): a
            # retry on the proposers' subject could come from a runner that
            # never held the run.
            found = await self._runs.get(req.id)
            if found is None:
                raise FlowRunNotFound(f"no flow run with id {req.id}")
            return ProposeReply(
                status=Decision.REJECT,
                state=found[0].state,
                reason="a retry is asked on flowrun.retry (the operator role), "
                "not on flowrun.state.propose",
                attempt=found[0].attempt,
                revision=found[1],
            )
        # Judged first on the copy this orchestrator last wrote or read, if it
        # has one (RecentRuns says why that is safe), then on the stored run.
        remembered = self._recent.get(req.id)
        for tries in range(CAS_ATTEMPTS):
            from_recent = remembered is not None
            found = remembered or await self._runs.get(req.id)
            remembered = None
            if found is None:
                raise FlowRunNotFound(f"no flow run with id {req.id}")
            run, revision = found
            if not from_recent:
                self._recent.remember(run, revision)
            ctx = rules.Context(run=run, proposal=req, now=self._clock.now(), revision=revision)
            outcome = rules.decide(ctx)
            if from_recent and (outcome.status is not Decision.ACCEPT or outcome.replay):
                continue  # an answer that writes nothing is given on the stored run only
            slot: float | None = None
            if outcome.replay:
                await self._publisher.offer(run, ctx.now)
                if rules.claim_sent_again(ctx):  # its slot lease, renewed or taken from now
                    limit = await self._slot_limit(run)
                    outcome, slot = await self._slots.claim_again(run, req, limit, self._slot_lease)
            if outcome.status is not Decision.ACCEPT or outcome.replay:
                return ProposeReply(
                    status=outcome.status,
                    state=run.state,
                    reason=outcome.reason,
                    delay_seconds=outcome.delay_seconds,
                    attempt=run.attempt,
                    revision=revision,
                    lease_seconds=slot,
                )
            state = rules.build_state(ctx)
            new = rules.apply(ctx, state)
            hold: Hold | None = None
            # Entering a claimed state takes a slot, however it is entered: a
            # Scheduled run proposed straight to Running must wait for one too.
            claims = state.type in rules.CLAIMED_TYPES and run.state.type not in rules.CLAIMED_TYPES
            releases = state.type not in rules.CLAIMED_TYPES
            # Only taking or giving back a slot needs the deployment's limit:
            # Pending -> Running, the commonest transition, skips that read.
            deployment = await self._deployment_of(run) if claims or releases else None
            limit = deployment.concurrency_limit or 0 if deployment else 0
            if limit and claims:
                lease = SlotLease(
                    deployment_id=run.deployment_id or "",
                    flow_run_id=run.id,
                    runner=req.runner,
                    attempt=new.attempt,
                )
                hold = await self._slots.acquire(lease, limit, self._slot_lease)
                if hold is None:
                    if from_recent:
                        continue  # as above: answer WAIT only on the stored run
                    return ProposeReply(
                        status=Decision.WAIT,
                        state=run.state,
                        reason=f"waiting for a concurrency slot of {run.deployment_name} "
                        f"({limit} of {limit} in use)",
                        delay_seconds=SLOT_RETRY_SECONDS,
                        attempt=run.attempt,
                        revision=revision,
                    )
            try:
                new_revision = await self._runs.update(new, revision)
            except Stale:
                if hold is not None:
                    await self._slots.give_back(run.deployment_id or "", hold)
                await after_stale(tries)
                continue  # someone else moved the run; judge again against the new state
            self._recent.remember(new, new_revision)
            if limit and releases:
                await self._slots.release(run.deployment_id or "", limit, run.id)
            await self._publisher.offer(new, ctx.now)
            measure(run, new, ctx.now)
            return ProposeReply(
                status=Decision.ACCEPT,
                state=state,
                attempt=new.attempt,
                revision=new_revision,
                flow_run=new,
                # a runner's claim: it starts the run from this deployment
                deployment=deployment if claims and req.runner else None,
                lease_seconds=float(ttl_seconds(self._slot_lease)) if hold else None,
            )
        raise Conflict(f"flow run {req.id} is changing too fast; propose again")

    async def _deployment_of(self, run: FlowRun) -> Deployment | None:
        if run.deployment_id is None:
            return None
        return await self._deployments.get(run.deployment_id)

    async def _slot_limit(self, run: FlowRun) -> int:
        """The run's deployment concurrency limit (0: none)."""
        deployment = await self._deployment_of(run)
        return deployment.concurrency_limit or 0 if deployment else 0

    async def heartbeat(self, req: Heartbeat) -> HeartbeatReply:
        """Record a runner as alive and renew the slot leases of the runs it holds.

        The reply names the runs it holds no longer (``lost``), so that a
        runner back from a pause or a partition kills their processes.
        """
        # Two missed heartbeats and the runner is gone: its entry expires (the
        # watcher marks its runs) and its slots come back. Whole seconds,
        # rounded up: the runner fences itself within the lease it is told.
        lease = float(ttl_seconds(2 * req.interval))
        status = RunnerStatus(
            runner=req.runner,
            at=self._clock.now(),
            interval=req.interval,
            limit=req.limit,
            runs=req.runs,
            queues=req.queues,
            deployments=req.deployments,
        )
        await self._publisher.heartbeat(status, lease)
        lost: list[str] = []
        for held in req.runs:
            found = await self._runs.get(held.id)
            if found is None:
                continue
            run = found[0]
            if run.attempt != held.attempt or _declared_lost(run):
                lost.append(held.id)
                continue
            limit = await self._slot_limit(run)
            if limit and run.state.type in rules.CLAIMED_TYPES:
                slot = SlotLease(
                    deployment_id=run.deployment_id or "",
                    flow_run_id=run.id,
                    runner=req.runner,
                    attempt=run.attempt,
                )
                hold = await self._slots.acquire(slot, limit, lease)
                if hold is None:
                    lost.append(held.id)  # its slot lapsed and was taken: not ours to run
                elif hold.fresh and not await self._still_claimed(held.id, held.attempt):
                    # The slot was free because the run ended (its slots
                    # released) after the read above: not one to hold for a lease.
                    await self._slots.give_back(slot.deployment_id, hold)
        return HeartbeatReply(lease_seconds=lease, lost=lost)

    async def _still_claimed(self, run_id: str, attempt: int) -> bool:
        """The run is stored in a claimed state of ``attempt``: a slot taken
        for it now is its own. (A transition out of those states writes the
        run first and then frees its slots, so a slot taken before this read
        is either seen here or freed by that transition.)"""
        found = await self._runs.get(run_id)
        if found is None:
            return False
        run = found[0]
        return (
            run.attempt == attempt
            and run.state.type in rules.CLAIMED_TYPES
            and not _declared_lost(run)
        )

    async def cancel(self, req: CancelFlowRun) -> FlowRun:
        """Scheduled or Pending: Cancelled at once. Running or Paused: Cancelling,
        for the cancellation-watcher to finish. Cancelling twice is harmless."""
        for _ in range(CAS_ATTEMPTS):
            run = await self.read(FlowRunRef(id=req.id))
            current = run.state.type
            if current in (StateType.CANCELLING, StateType.CANCELLED):
                return run
            if current in TERMINAL_TYPES:
                raise Conflict(
                    f"flow run {run.id} already ended as {run.state.describe()}; nothing to cancel",
                    details={"state": current.value},
                )
            target = (
                StateType.CANCELLED
                if current in (StateType.SCHEDULED, StateType.PENDING)
                else StateType.CANCELLING
            )
            message = req.reason or "cancelled on request"
            reply = await self.propose(
                ProposeState(id=run.id, state=ProposedState(type=target, message=message))
            )
            if reply.status is Decision.ACCEPT:
                return await self.read(FlowRunRef(id=req.id))
            # the run moved under us (e.g. it just finished); look again
        raise Conflict(f"flow run {req.id} is changing too fast; cancel again")

    # --- delete -------------------------------------------------------------------
    async def delete(self, req: DeleteFlowRun) -> Deleted:
        """Remove a run that has not started (Scheduled, unclaimed) or has finished.

        The delete marker (the deletion event) is a compare-and-set on the
        revision judged, then the run's idempotency key is freed, in that
        order: a crash before the key is freed leaves it naming a deleted run,
        which the next create with that key stores again under the same id,
        so one key still never makes two runs.
        """
        for tries in range(CAS_ATTEMPTS):
            found = await self._runs.get(req.id)
            if found is None:
                raise FlowRunNotFound(f"no flow run with id {req.id}")
            run, revision = found
            refusal = rules.why_not_deletable(run, scheduled_only=req.scheduled_only)
            if refusal is not None:
                raise Conflict(refusal, details={"state": run.state.type.value})
            try:
                await self._runs.delete(run, revision, req.reason)
            except Stale:
                await after_stale(tries)
                continue  # it moved meanwhile; judge it again
            self._recent.forget(run.id)
            scope = run.deployment_name if run.deployment_id else f"flow:{run.flow_name}"
            await self._keys.release(run, scope or "")
            return Deleted(id=run.id)
        raise Conflict(f"flow run {req.id} is changing too fast; delete again")
