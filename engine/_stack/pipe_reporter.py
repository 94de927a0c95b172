"""The reporter of a flow-run process started by a runner: everything over one inherited socket.

:class:`PipeReporter` implements :class:`~engine._core.reporting.Reporter`
(and what :mod:`engine._stack.execute` needs besides) like
:class:`~engine._stack.reporter.StackReporter`, but holds no NATS connection:
it writes :mod:`engine._stack.relay_frames` frames on the socket its runner
handed it, and the runner's relay (:mod:`engine.runner._relay`) checks each
and sends it on. So the process costs no connection, and the flow's code
never holds the runner's credentials.

* Flow states, subflow creation, result puts and gets, and the reads the
  engine needs (the run's task records to resume, another run's for
  ``from_run``) are requests: the calling thread blocks until the relay's
  reply (:class:`~engine._stack.relay_channel.RelayChannel`, which starts no
  thread). A refusal raises the error it names (StackUnavailable, MissingResult, …).
* Task-run records and log lines are written at once and not answered; the
  relay publishes them pipelined and stores them before the run's next
  non-RUNNING state (it flushes first); :meth:`close` flushes once more if a
  record was sent after that.

User code that calls the client from inside the run (``create_flow_run``,
``wait_for_flow_run``, :class:`~engine.client.Client`) connects on first
use with the process's own ``SLUICE_NATS_*`` settings, which a runner sets
to the *flow* credentials it was given (``SLUICE_FLOW_NATS_*``), never its
own: see docs/security.md.

This module imports no nats: a trivial run never loads it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar

import msgspec

from engine._core.context import Runtime
from engine._core.reporting import FlowRunInfo, Proposal, TaskRunInfo
from engine._stack import relay_frames as frames
from engine._stack.relay_channel import RelayChannel
from engine._stack.wire import log_record, proposed, wire_parameters
from engine.exceptions import Abort
from engine.results import check_name, split_ref
from shared import names, telemetry
from shared.errors import SluiceError, StackUnavailable
from shared.messages import Decision, LogRecord, ProposeReply, TaskRunRecord
from shared.models import Deployment, FlowRun
from shared.states import State, StateType

__all__ = ["PipeReporter", "PipeResultStore"]

T = TypeVar("T")
log = logging.getLogger("sluice.engine")


class PipeResultStore:
    """Results in the object store ``sluice_results``, put and read through the relay.

    The same refs as :class:`~engine._stack.object_results.ObjectResultStore`.
    """

    prefix = f"object:{names.RESULTS_BUCKET}/"

    def __init__(self, reporter: PipeReporter) -> None:
        self._reporter = reporter

    def put(self, name: str, data: bytes) -> str:
        check_name(name)
        self._reporter.request(frames.PutResult(id=0, name=name, data=data))
        return f"{self.prefix}{name}"

    def get(self, ref: str) -> bytes:
        name = split_ref(ref, self.prefix)
        reply = self._reporter.request(frames.GetResult(id=0, name=name))
        assert isinstance(reply, frames.ResultData)
        return reply.data


class PipeReporter:
    """A Reporter over the relay socket ``sock`` (module docstring). Thread-safe."""

    def __init__(self, sock: socket.socket, *, runner: str | None = None) -> None:
        self._channel = RelayChannel(sock)
        self.runner = runner or f"engine@{socket.gethostname() or 'localhost'}:{os.getpid()}"
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._client_exits = ExitStack()
        self._portal: Any = None
        self._client: Any = None
        self.results = PipeResultStore(self)

    @classmethod
    def from_fd(cls, fd: int) -> PipeReporter:
        return cls(socket.socket(fileno=fd))

    # --- lifecycle ------------------------------------------------------------------------
    def open(self) -> Self:
        return self

    def close(self) -> None:
        """Wait until every record sent is stored, then hang up."""
        try:
            # Only if a record was sent since the relay last stored them all:
            # a trivial run's last request (its final state) did that already.
            if self._channel.closed is None and self._channel.unflushed:
                self.flush()
        except SluiceError as exc:
            log.error("the run's last records may be lost: %s", exc.message)
        finally:
            self._client_exits.close()
            self._portal = self._client = None
            self._channel.close("the reporter is closed")

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
        return Runtime(reporter=self, results=self.results, **changes)

    # --- frames ----------------------------------------------------------------------------
    def request(self, frame: Any, *, flushes: bool = False) -> frames.ToProcess:
        """Send a request frame and wait for its reply (RelayChannel.request)."""
        return self._channel.request(frame, flushes=flushes)

    # --- reads the engine needs ---------------------------------------------------------
    def read_flow_run(self, run_id: str) -> FlowRun:
        reply = self.request(frames.ReadRun(id=0, run_id=run_id))
        assert isinstance(reply, frames.RunRead)
        return reply.run

    def read_deployment(self, deployment_id: str) -> Deployment:
        reply = self.request(frames.ReadDeployment(id=0, deployment_id=deployment_id))
        assert isinstance(reply, frames.DeploymentRead)
        return reply.deployment

    def _records(self, run_id: str) -> frames.Records:
        reply = self.request(frames.ReadRecords(id=0, run_id=run_id))
        assert isinstance(reply, frames.Records)
        return reply

    def load_plan(self, run_id: str) -> Any:
        """The resume plan of the run (engine._core.resume.load_plan, through the relay)."""
        from engine._core.resume import plan_resume

        found = self._records(run_id)
        if not found.records:
            return None
        plan = plan_resume(found.records, found.rerun)
        return plan if plan.completed else None

    def task_records(self, flow_run_id: str) -> tuple[str, list[TaskRunRecord]]:
        """An earlier run's flow name and task-run records (``from_run``)."""
        found = self._records(flow_run_id)
        return found.flow_name, found.records

    # --- user code's client ------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """A client with this process's own settings (the flow credentials), opened on first use."""
        with self._lock:
            if self._client is None:
                from anyio.from_thread import start_blocking_portal

                from engine.client import Client
                from shared.settings import Settings

                portal = self._client_exits.enter_context(
                    start_blocking_portal(name="sluice-client")
                )
                self._client = self._client_exits.enter_context(
                    portal.wrap_async_context_manager(Client(Settings.from_env()))
                )
                self._portal = portal
            return self._client

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the client's loop (opening the client first)."""
        self.client  # noqa: B018  # opens the portal
        result: T = self._portal.call(fn, *args)
        return result

    # --- claims and proposals ----------------------------------------------------------------
    def adopt(self, run_id: str, attempt: int) -> None:
        self._attempts[run_id] = attempt

    def attempt_of(self, run_id: str) -> int | None:
        return self._attempts.get(run_id)

    def propose(
        self, run_id: str, state: State, *, claim: bool = False, retry: bool = False
    ) -> ProposeReply:
        """Propose ``state`` with the runner's claim attempt. ``claim`` is refused:
        the runner claimed the run before starting this process."""
        if claim:
            raise StackUnavailable("a process started by a runner cannot claim runs itself")
        frame = frames.Propose(
            id=0,
            run_id=run_id,
            state=proposed(state),
            transition_id=str(uuid.uuid4()),
            retry=retry,
        )
        # The relay stores the records sent before any state but RUNNING first.
        flushes = state.type is not StateType.RUNNING
        if telemetry.enabled():
            attributes = {"sluice.flow_run.id": run_id, "sluice.state.type": state.type.value}
            with (
                telemetry.span(f"propose {state.type.value}", attributes=attributes),
                telemetry.request_span(names.FLOWRUN_PROPOSE) as headers,
            ):
                reply = self.request(
                    msgspec.structs.replace(frame, trace_headers=headers), flushes=flushes
                )
        else:
            reply = self.request(frame, flushes=flushes)
        assert isinstance(reply, frames.ProposeResult)
        result = reply.reply
        if result.status is Decision.WAIT:
            delay = result.delay_seconds or 0
            self.log_line(run_id, logging.INFO, f"waiting {delay:.1f}s: {result.reason}")
        return result

    # --- the Reporter protocol ---------------------------------------------------------------
    def flow_run_created(self, run: FlowRunInfo) -> FlowRunInfo:
        if run.parent_flow_run_id is None:
            raise Abort("a flow run started by a runner can only create subflows of its run")
        reply = self.request(
            frames.CreateSubflow(
                id=0,
                flow_name=run.flow_name,
                parent_flow_run_id=run.parent_flow_run_id,
                idempotency_key=f"engine:{run.id}",
                parameters=wire_parameters(run.parameters),
                runner=self.runner[:128],
            )
        )
        assert isinstance(reply, frames.SubflowCreated)
        stored, claimed = reply.run, reply.claim
        if claimed.status is not Decision.ACCEPT:
            raise Abort(f"could not claim the new flow run {stored.name!r}: {claimed.reason}")
        self._attempts[stored.id] = claimed.attempt
        return FlowRunInfo(
            id=stored.id,
            name=stored.name,
            flow_name=stored.flow_name,
            state=claimed.state,
            parameters=run.parameters,
            parent_flow_run_id=stored.parent_flow_run_id,
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
        if flow_run_id is None:
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
        self._channel.post(frames.TaskRecord(record=record))

    def log(self, record: logging.LogRecord) -> None:
        line = log_record(record)
        if line is not None:
            self._channel.post(frames.Log(record=line))

    def log_line(self, run_id: str, level: int, message: str, detail: str | None = None) -> None:
        """A line in the run's log from the engine itself, also logged locally."""
        log.log(level, "flow run %s: %s", run_id, message)
        text = f"{message}\n{detail}" if detail else message
        record = LogRecord(
            flow_run_id=run_id,
            timestamp=datetime.now(UTC),
            level=level,
            message=text,
            logger="sluice.engine",
        )
        self._channel.post(frames.Log(record=record))

    def flush(self) -> None:
        self.request(frames.Flush(id=0), flushes=True)
