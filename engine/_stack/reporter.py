"""The reporter for a running stack: flow runs orchestrated, task states and logs streamed.

:class:`StackReporter` implements :class:`~engine._core.reporting.Reporter` over
NATS. It owns one background thread running an event loop (an anyio
blocking portal) with one :class:`~engine.client.Client`; the engine's
threads hand work to it:

* **Flow runs** are created on ``flowrun.create`` with ``flow_name`` (and
  ``parent_flow_run_id`` for a subflow), marked ``agentless`` (this process
  runs them; no runner may) with an idempotency key, then claimed (PENDING
  with this process as ``runner``). The engine adopts the stored id and name.
* **Flow states** are proposed on ``flowrun.state.propose``, each with a
  fresh ``transition_id`` that is re-sent when the request is retried after
  a timeout (so a retry never applies a transition twice), and with the
  claim ``attempt`` this process holds for the run (so a stale process is
  refused). The reply becomes the engine's Proposal.
* **Task-run states and log lines** are encoded at once, on the calling
  thread, and published asynchronously by an :class:`~engine._stack.outbox.Outbox`
  on ``taskrun.states.<flow_run_id>`` / ``flowrun.logs.<run_id>``; states of
  one task run that follow each other faster than the outbox publishes are
  coalesced to the newest (see there). Every
  flow-state proposal first flushes the outbox, so the records that led to
  a state (the final one included) are stored before it; closing flushes
  once more.
* **Results** go to the JetStream object store ``sluice_results`` through
  :class:`ObjectResultStore`.
* **Tracing** (:mod:`shared.telemetry`, when on): each flow-state proposal
  is a span (``propose <STATE>``, with the run, the claim attempt and the
  decision) around the client span of its request(s), whose headers carry
  the trace to the orchestrator. Task states and logs add no spans.

Errors: StackUnavailable when NATS or the orchestrator cannot be reached
(opening, creating, proposing); nats-py exceptions are translated here or in
:mod:`shared.connection`, never passed on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import msgspec
from anyio.from_thread import BlockingPortal, start_blocking_portal

from engine import states
from engine._core.context import Runtime
from engine._core.reporting import FlowRunInfo, Proposal, TaskRunInfo
from engine._stack.object_results import ObjectResultStore
from engine._stack.outbox import Outbox
from engine._stack.wire import log_record, proposed, wire_parameters
from engine.client import Client
from engine.exceptions import Abort
from shared import names, telemetry
from shared.errors import SluiceError, StackUnavailable
from shared.messages import Decision, LogRecord, ProposeReply, TaskRunRecord
from shared.models import Deployment, FlowRun
from shared.settings import Settings
from shared.states import State, StateType

if TYPE_CHECKING:
    from engine._core.resume import ResumePlan

__all__ = ["StackReporter", "open_stack_runtime", "until_available"]

T = TypeVar("T")
log = logging.getLogger("sluice.engine")

#: Seconds between tries of a request the stack could not take, first and most.
RETRY_FIRST, RETRY_MOST = 0.25, 2.0
#: Seconds a closing reporter spends flushing records before it gives up.
CLOSE_FLUSH_TIMEOUT = 30.0
_encoder = msgspec.json.Encoder()


async def until_available(
    request: Callable[[], Awaitable[T]],
    grace: float,
    warn: Callable[[StackUnavailable], None],
) -> T:
    """``request()``, tried again while the stack is unavailable, for up to ``grace``
    seconds (backing off to RETRY_MOST); ``warn`` is told of the first failure.

    A NATS node restarting or a cluster electing leaders makes the stack
    unavailable for seconds; failing the run for that would crash runs the
    stack could have finished. Waiting is safe: a process whose runner lost its
    claim meanwhile is fenced by that runner, and each try re-sends the same
    transition id, so none is applied twice.
    """
    deadline = anyio.current_time() + grace
    delay = RETRY_FIRST
    while True:
        try:
            return await request()
        except StackUnavailable as exc:
            if anyio.current_time() + delay > deadline:
                raise
            if delay == RETRY_FIRST:
                warn(exc)
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_MOST)


def default_runner_name() -> str:
    """``engine@<host>:<pid>``: who holds a claim this process made."""
    host = socket.gethostname().replace("/", "-").replace("%", "-") or "localhost"
    return f"engine@{host}:{os.getpid()}"[:128]


class StackReporter:
    """A :class:`~engine._core.reporting.Reporter` against a running stack (module docstring).

    Use as a context manager (``with StackReporter(settings) as reporter``) or
    call :meth:`open` / :meth:`close`. Thread-safe.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        runner: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.runner = runner or default_runner_name()
        self._connect_timeout = connect_timeout
        self._exits = ExitStack()
        self._portal: BlockingPortal | None = None
        self._client: Client | None = None
        self._outbox: Outbox | None = None
        #: The claim attempt this process holds, per flow run id.
        self._attempts: dict[str, int] = {}
        self.results = ObjectResultStore(self.call, lambda: self.client.nc)

    # --- lifecycle ----------------------------------------------------------------
    def open(self) -> Self:
        """Start the I/O thread and connect. Raises StackUnavailable."""
        portal = self._exits.enter_context(start_blocking_portal(name="sluice-reporter"))
        try:
            self._client, self._outbox = self._exits.enter_context(
                portal.wrap_async_context_manager(self._session())
            )
        except BaseException:
            self._exits.close()
            raise
        self._portal = portal
        return self

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[tuple[Client, Outbox]]:
        async with Client(self.settings, connect_timeout=self._connect_timeout) as client:
            outbox = Outbox(client.nc.jetstream(), grace=self.settings.outage_grace)
            async with anyio.create_task_group() as tg:
                tg.start_soon(outbox.run)
                try:
                    yield client, outbox
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_FLUSH_TIMEOUT):
                        await outbox.flush()
                    tg.cancel_scope.cancel()

    def close(self) -> None:
        """Flush every record (bounded by CLOSE_FLUSH_TIMEOUT), disconnect, stop the thread.

        Records reported after this are dropped; calls raise RuntimeError.
        """
        try:
            self._exits.close()
        finally:
            self._portal = self._client = self._outbox = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def runtime(self, **changes: Any) -> Runtime:
        """A runtime that reports here and keeps results in the object store."""
        return Runtime(reporter=self, results=self.results, **changes)

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("the reporter is not open")
        return self._client

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the reporter's loop and return its result (blocking)."""
        if self._portal is None:
            raise RuntimeError("the reporter is not open; use `with StackReporter(...)`")
        return self._portal.call(fn, *args)

    # --- claims and proposals ---------------------------------------------------------
    def task_records(self, flow_run_id: str) -> tuple[str, list[TaskRunRecord]]:
        """An earlier run's flow name and task-run records (for start tasks'
        ``from_run``). Raises FlowRunNotFound, StackUnavailable."""
        from engine._core.resume import read_task_records

        run = self.call(self.client.read_flow_run, flow_run_id)
        return run.flow_name, self.call(read_task_records, self.client.nc, run.id)

    def read_flow_run(self, run_id: str) -> FlowRun:
        """Raises FlowRunNotFound, StackUnavailable."""
        return self.call(self.client.read_flow_run, run_id)

    def read_deployment(self, deployment_id: str) -> Deployment:
        """Raises DeploymentNotFound, StackUnavailable."""
        return self.call(lambda: self.client.read_deployment(id=deployment_id))

    def load_plan(self, run_id: str) -> ResumePlan | None:
        """What earlier attempts of the run left to reuse (engine._core.resume)."""
        from engine._core.resume import load_plan

        return self.call(load_plan, self.client.nc, run_id)

    def adopt(self, run_id: str, attempt: int) -> None:
        """Send ``attempt`` with every later proposal for ``run_id`` (a runner's claim)."""
        self._attempts[run_id] = attempt

    def attempt_of(self, run_id: str) -> int | None:
        return self._attempts.get(run_id)

    def propose(
        self, run_id: str, state: State, *, claim: bool = False, retry: bool = False
    ) -> ProposeReply:
        """Flush records, then propose ``state``; ``claim`` sends this process as
        the runner of a PENDING proposal and keeps the attempt an ACCEPT grants.

        Raises StackUnavailable once the stack stayed unavailable for the
        settings' ``outage_grace``, or the error the stack replied.
        """
        if not telemetry.enabled():
            return self.call(self._propose, run_id, state, claim, retry)
        attributes = {
            "sluice.flow_run.id": run_id,
            "sluice.state.type": state.type.value,
            "sluice.state.name": state.name or "",
            "sluice.claim": claim,
        }
        with telemetry.span(f"propose {state.type.value}", attributes=attributes) as span:
            reply = self.call(self._propose, run_id, state, claim, retry)
            if span is not None:
                span.set_attributes(
                    {"sluice.decision": reply.status.value, "sluice.attempt": reply.attempt}
                )
            return reply

    async def _propose(self, run_id: str, state: State, claim: bool, retry: bool) -> ProposeReply:
        assert self._outbox is not None
        if state.type is not StateType.RUNNING:
            # Records that led to this state are stored before it (so a client
            # that sees a run end finds all its logs and task runs). Nothing
            # needs to precede RUNNING, and waiting here would delay the start.
            await self._outbox.flush()
        transition_id = str(uuid.uuid4())
        reply: ProposeReply = await self._retrying(
            lambda: self.client.propose_state(
                run_id,
                proposed(state),
                transition_id=transition_id,
                attempt=self._attempts.get(run_id),
                runner=self.runner if claim else None,
                retry=retry,
            )
        )
        if claim and reply.status is Decision.ACCEPT:
            self._attempts[run_id] = reply.attempt
        if reply.status is Decision.WAIT:
            delay = reply.delay_seconds or 0
            self.log_line(run_id, logging.INFO, f"waiting {delay:.1f}s: {reply.reason}")
        return reply

    async def _retrying(self, request: Callable[[], Awaitable[T]]) -> T:
        def warn(exc: StackUnavailable) -> None:
            log.warning(
                "the stack is unavailable (%s); retrying for up to %.0f s",
                exc.message,
                self.settings.outage_grace,
            )

        return await until_available(request, self.settings.outage_grace, warn)

    # --- the Reporter protocol -----------------------------------------------------------
    def flow_run_created(self, run: FlowRunInfo) -> FlowRunInfo:
        stored: FlowRun = self.call(self._create, run)
        claimed = self.propose(stored.id, states.Pending(), claim=True)
        if claimed.status is not Decision.ACCEPT:
            raise Abort(f"could not claim the new flow run {stored.name!r}: {claimed.reason}")
        return FlowRunInfo(
            id=stored.id,
            name=stored.name,
            flow_name=stored.flow_name,
            state=claimed.state,
            parameters=run.parameters,
            parent_flow_run_id=stored.parent_flow_run_id,
        )

    async def _create(self, run: FlowRunInfo) -> FlowRun:
        parameters = wire_parameters(run.parameters)
        return await self._retrying(
            lambda: self.client.create_flow_run(
                flow_name=run.flow_name,
                parameters=parameters,
                parent_flow_run_id=run.parent_flow_run_id,
                idempotency_key=f"engine:{run.id}",  # a retried create finds the first run
                agentless=True,
            )
        )

    def propose_flow_state(self, run: FlowRunInfo, state: State) -> Proposal:
        reply = self.propose(run.id, state)
        return Proposal(reply.status, reply.state, reply.reason, reply.delay_seconds)

    def task_run_created(self, run: TaskRunInfo) -> None:
        self._task_record(run, run.state)

    def task_run_state(self, run: TaskRunInfo, state: State) -> None:
        self._task_record(run, state)

    def _task_record(self, run: TaskRunInfo, state: State) -> None:
        flow_run_id = run.flow_run_id
        if flow_run_id is None or self._outbox is None:
            return
        record = TaskRunRecord(
            flow_run_id=flow_run_id,
            task_run_id=run.id,
            task_key=run.task_key or run.name,
            task_name=run.task_name,
            name=run.name,
            state=state,
            flow_run_attempt=self._attempts.get(flow_run_id, 0),
            map_index=run.map_index,
            upstream_ids=list(run.upstream_ids),
            tags=list(run.tags),
        )
        # Encoded here, not on the loop: the state must be what it is now.
        self._outbox.put(names.taskruns_subject(flow_run_id), _encoder.encode(record), run.id)

    def log(self, record: logging.LogRecord) -> None:
        line = log_record(record)
        if line is not None:
            self._put_log(line)

    def log_line(self, run_id: str, level: int, message: str, detail: str | None = None) -> None:
        """A line in the run's log from the engine itself (logger ``sluice.engine``),
        also logged locally to that logger. ``detail`` (a traceback) follows the
        line in the run's log only."""
        log.log(level, "flow run %s: %s", run_id, message)
        now = datetime.now(UTC)
        text = f"{message}\n{detail}" if detail else message
        record = LogRecord(
            flow_run_id=run_id, timestamp=now, level=level, message=text, logger="sluice.engine"
        )
        self._put_log(record)

    def _put_log(self, record: LogRecord) -> None:
        if self._outbox is not None:
            self._outbox.put(names.logs_subject(record.flow_run_id), _encoder.encode(record))

    def flush(self) -> None:
        """Block until every record put so far is stored."""
        if self._outbox is not None:
            self.call(self._outbox.flush)


def open_stack_runtime() -> tuple[Runtime, Callable[[], None]]:
    """A runtime for a flow call under the configured-stack rule, and its closer.

    Raises StackUnavailable, saying why the stack was expected.
    """
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise SluiceError(str(exc)) from None
    reporter = StackReporter(settings)
    try:
        reporter.open()
    except StackUnavailable as exc:
        raise StackUnavailable(
            f"{exc.message} (flow runs report to the stack because SLUICE_NATS_URL is set; "
            "unset it to run flows locally)"
        ) from None
    return reporter.runtime(), reporter.close
