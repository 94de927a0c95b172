"""The async client for a running Sluice stack.

Everything goes through the public contract: requests to the orchestrator
for writes and queries, the ``flow_runs`` KV bucket for reading and watching
a run, the log stream for logs. Errors are :mod:`shared.errors` classes;
nats-py exceptions are translated in :mod:`shared.connection`.

    async with Client() as client:
        run = await client.create_flow_run("etl/nightly", parameters={"day": "2026-11-20"})
        final = await client.wait_for_flow_run(run.id)

With tracing on (:mod:`shared.telemetry`; a client sets it up from ``OTEL_*``
when it opens), every request is a client span whose W3C trace context
travels in the request's headers, so the orchestrator's work joins the
caller's trace.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from engine.client._deployments import _DeploymentRequests
from engine.client._streams import read_logs, watch_run
from shared import names
from shared.codec import decode
from shared.errors import Conflict, FlowRunNotFound, InvalidParameters, StackUnavailable
from shared.messages import (
    CancelFlowRun,
    CreateFlowRun,
    Decision,
    Deleted,
    DeleteFlowRun,
    DispatchConsumer,
    DispatchConsumerReply,
    FlowRunPage,
    Heartbeat,
    HeartbeatReply,
    HeldRun,
    ListFlowRuns,
    LogRecord,
    ProposedState,
    ProposeReply,
    ProposeState,
)
from shared.models import FlowRun
from shared.states import AWAITING_RETRY, TERMINAL_TYPES, StateType

__all__ = ["Client"]


class Client(_DeploymentRequests):
    """A connection to the stack. Use as ``async with Client(settings) as c``.

    Pass ``nc`` to reuse a NATS connection you own (it is not closed for you).
    """

    # --- flow runs --------------------------------------------------------------
    async def create_flow_run(
        self,
        deployment: str | None = None,
        *,
        deployment_id: str | None = None,
        flow_name: str | None = None,
        parameters: dict[str, Any] | None = None,
        name: str | None = None,
        scheduled_start_time: datetime | None = None,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        parent_flow_run_id: str | None = None,
        agentless: bool = False,
        request_id: str | None = None,
    ) -> FlowRun:
        """Create a run of a deployment (``flow/deployment``, or by id), or with
        ``flow_name`` a run with no deployment.

        Returns once the run is durably stored. With an ``idempotency_key``,
        calling again returns the first run instead of creating another, so it
        is safe to retry after a StackUnavailable. ``agentless``: the caller
        executes the run itself; no runner is offered it. ``request_id``:
        the new run records it as ``created_by_request`` (see CreateFlowRun).
        """
        req = CreateFlowRun(
            deployment=deployment,
            deployment_id=deployment_id,
            flow_name=flow_name,
            parameters=parameters,
            name=name,
            scheduled_start_time=scheduled_start_time,
            idempotency_key=idempotency_key,
            tags=list(tags),
            parent_flow_run_id=parent_flow_run_id,
            agentless=agentless,
            request_id=request_id,
        )
        return await self._request(names.FLOWRUN_CREATE, req, FlowRun)

    async def read_flow_run(self, run_id: str) -> FlowRun:
        return (await self._read_with_revision(run_id))[0]

    async def _read_with_revision(self, run_id: str) -> tuple[FlowRun, int]:
        found = await _get_run(await self._kv(), run_id)
        if found is None:
            # Any replica answers a direct get, and on a cluster one may answer
            # before it has applied the newest write: a run created a moment
            # ago would be "not found". Only the stream's leader may say so.
            found = await _get_run(await self._leader_kv(), run_id)
        if found is None:
            raise FlowRunNotFound(f"no flow run with id {run_id}")
        return found

    async def list_flow_runs(
        self,
        *,
        states: Iterable[str] = (),
        deployment: str | None = None,
        flow_name: str | None = None,
        tags: Iterable[str] = (),
        parent_flow_run_id: str | None = None,
        runner: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        name: str | None = None,
        id_prefix: str | None = None,
        limit: int = 50,
        offset: int = 0,
        count: bool = False,
    ) -> FlowRunPage:
        """Newest first (by expected start time), ``limit`` at a time; ``count``: with a total."""
        req = ListFlowRuns(
            states=list(states),
            deployment=deployment,
            flow_name=flow_name,
            tags=list(tags),
            parent_flow_run_id=parent_flow_run_id,
            runner=runner,
            since=since,
            until=until,
            name=name,
            id_prefix=id_prefix,
            limit=limit,
            offset=offset,
            count=count,
        )
        return await self._request(names.FLOWRUN_LIST, req, FlowRunPage)

    async def retry_flow_run(
        self,
        run_id: str,
        *,
        from_task: str | None = None,
        message: str | None = None,
        agentless: bool = False,
    ) -> FlowRun:
        """Send a finished run back to Scheduled (AwaitingRetry) to run again.

        Tasks whose results an earlier attempt kept are not run again (they end
        Resumed) — except, with ``from_task`` (a task name, key or run name),
        that task and every task after it. Raises Conflict if the run has not
        finished or the orchestrator refuses, InvalidParameters if no task
        matches ``from_task``. ``agentless``: the caller executes the retry
        itself; no runner takes it.
        """
        run = await self.read_flow_run(run_id)
        if not run.state.is_terminal:
            raise Conflict(
                f"flow run {run.name!r} is {run.state.describe()}; only a finished run "
                "can be retried",
                details={"state": run.state.type.value},
            )
        data: Any = None
        if from_task is not None:
            from engine._core.resume import read_task_records, rerun_keys_from, retry_data

            try:
                keys = rerun_keys_from(await read_task_records(self.nc, run.id), from_task)
            except ValueError as exc:
                raise InvalidParameters(str(exc)) from None
            data = retry_data(from_task, keys)
        default = "retry requested" + (f" from task {from_task!r}" if from_task else "")
        state = ProposedState(
            type=StateType.SCHEDULED, name=AWAITING_RETRY, message=message or default, data=data
        )
        reply = await self.propose_state(
            run.id, state, transition_id=str(uuid.uuid4()), retry=True, agentless=agentless
        )
        if reply.status is not Decision.ACCEPT:
            raise Conflict(f"the retry was refused: {reply.reason}")
        return reply.flow_run or await self.read_flow_run(run.id)

    async def cancel_flow_run(
        self, run_id: str, *, reason: str | None = None, cascade: bool = True
    ) -> FlowRun:
        """Move a run to Cancelling (Cancelled at once if it has not started).

        With ``cascade`` (the default) its unfinished child runs are cancelled
        too. Raises Conflict if the run already finished; cancelling twice is
        harmless.
        """
        return await self._request(
            names.FLOWRUN_CANCEL,
            CancelFlowRun(id=run_id, reason=reason, cascade=cascade),
            FlowRun,
        )

    async def delete_flow_run(
        self, run_id: str, *, reason: str | None = None, scheduled_only: bool = False
    ) -> Deleted:
        """Delete a run that has not started or has finished; its idempotency
        key is freed. ``scheduled_only`` refuses a finished run too.

        Raises FlowRunNotFound for an unknown id and Conflict for a run that
        is claimed or under way (cancel it first).
        """
        req = DeleteFlowRun(id=run_id, reason=reason, scheduled_only=scheduled_only)
        return await self._request(names.FLOWRUN_DELETE, req, Deleted)

    async def dispatch_consumer(self, filters: list[str]) -> DispatchConsumerReply:
        """Have the orchestrator make (or restore) the dispatch consumer that
        runners serving ``filters`` share; runners may not configure one."""
        return await self._request(
            names.RUNNER_CONSUMER, DispatchConsumer(filters=filters), DispatchConsumerReply
        )

    async def propose_state(
        self,
        run_id: str,
        state: ProposedState,
        *,
        transition_id: str | None = None,
        attempt: int | None = None,
        runner: str | None = None,
        retry: bool = False,
        release: bool = False,
        agentless: bool = False,
        expected: StateType | None = None,
        trace_headers: dict[str, str] | None = None,
    ) -> ProposeReply:
        """Propose ``state``; ``expected`` (the state type the caller read the run
        in) makes the orchestrator refuse it if the run has moved on since.
        ``trace_headers``: the trace context of a request span someone else
        holds (a runner relaying its flow-run process's proposal), sent as they
        are instead of a span of this client's own."""
        req = ProposeState(
            id=run_id,
            state=state,
            # Always an id: it makes the copies a client re-sends while no reply
            # has come (a paused orchestrator) one transition, not several.
            transition_id=transition_id or str(uuid.uuid4()),
            attempt=attempt,
            runner=runner,
            retry=retry,
            release=release,
            agentless=agentless,
            expected=expected,
        )
        # Retries have their own subject, which only the operator role may use
        # (deploy/nats/auth.conf): a runner moves the runs it holds, never reopens one.
        subject = names.FLOWRUN_RETRY if retry else names.FLOWRUN_PROPOSE
        return await self._request(subject, req, ProposeReply, trace_headers=trace_headers)

    def watch_flow_run(
        self, run_id: str, *, resync: float = 5.0, history: bool = False
    ) -> AsyncGenerator[FlowRun, None]:
        """Yield the run now, then after every accepted transition, in order.

        Transitions come from the run's writes (the ``flow_runs`` stream), and
        those a quick run made before its write was delivered from the run's
        history, so quick ones are not merged; a run yielded for a past
        transition has the state it entered then (its other fields are as
        they are now). With ``history``, the run is yielded for each
        transition its history holds, from its creation on, instead of only
        as it is now. Every ``resync`` seconds without news the run is read
        again from KV, and the subscription is rebuilt if the connection was
        re-established meanwhile. Raises FlowRunNotFound for an unknown run, or once the run
        is deleted, and StackUnavailable when JetStream does not answer. Close
        the generator (``contextlib.aclosing``) to stop.
        """
        return watch_run(self.nc, self._read_with_revision, run_id, resync, history=history)

    async def wait_for_flow_run(self, run_id: str) -> FlowRun:
        """Return the run once it reaches a terminal state. Cancellation stops waiting."""
        async with contextlib.aclosing(self.watch_flow_run(run_id)) as runs:
            async for run in runs:
                if run.state.type in TERMINAL_TYPES:
                    return run
        raise AssertionError("unreachable")  # pragma: no cover

    def logs(self, run_id: str, *, follow: bool = False) -> AsyncGenerator[LogRecord, None]:
        """Yield a run's log records, oldest first.

        Without ``follow`` it stops after the newest record stored when the
        call began; with ``follow`` it keeps waiting for more until the
        caller stops (close the generator, e.g. with ``contextlib.aclosing``).
        """
        return read_logs(self.nc, run_id, follow)

    async def heartbeat(
        self,
        runner: str,
        *,
        interval: float,
        limit: int,
        runs: dict[str, int],
        queues: Iterable[str] = (),
        deployments: Iterable[str] = (),
    ) -> HeartbeatReply:
        """Say a runner is alive, holds ``runs`` (id -> attempt), serves queues and deployments."""
        req = Heartbeat(
            runner=runner,
            interval=interval,
            limit=limit,
            runs=[HeldRun(id=i, attempt=a) for i, a in runs.items()],
            queues=list(queues),
            deployments=list(deployments),
        )
        return await self._request(names.RUNNER_HEARTBEAT, req, HeartbeatReply)


async def _get_run(kv: KeyValue, run_id: str) -> tuple[FlowRun, int] | None:
    """The run and its revision as ``kv`` has it; None if it has none."""
    try:
        entry = await kv.get(run_id, validate_keys=False)
    except nats.js.errors.NotFoundError:
        return None
    except (nats.errors.TimeoutError, TimeoutError):
        raise StackUnavailable("the flow_runs bucket did not answer") from None
    if not entry.value:
        return None
    return decode(entry.value, FlowRun), entry.revision or 0
