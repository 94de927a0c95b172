"""The runner's end of a flow-run process's socket: check each frame, send it on.

A runner starts each local flow-run process with one end of a socketpair
(:mod:`engine._stack.relay_frames` has the frames, :mod:`engine._stack.pipe_reporter`
the process's end). :class:`Relay` serves the other end for as long as the
process lives, on the runner's own NATS connection:

* **Only its run.** A frame must be for the run the runner started the
  process for, or for a subflow of it that this relay created (agentless,
  and claimed here, so the relay holds its attempt too). Proposals carry the
  attempt the relay holds, never one the process names; task-run records
  must name that attempt. Anything else is refused with a message saying so
  (a request gets a Refused reply, a record a Refused with id 0). Reads
  (a run, a deployment, task-run records, results) are what a client may
  read anyway, and are served for any run.
* **Pipelined.** Task-run records and log lines go to an
  :class:`~engine._stack.outbox.Outbox` (published asynchronously, coalesced
  per task run); requests are served concurrently, each in its own task.
  Before a proposal of any state but RUNNING the outbox is flushed, so the
  records that led to a state are stored before it.
* **Waits out an outage.** While the runner's connection is down, a request
  is tried again (the same transition id, so a retried proposal applies at
  most once) for up to the settings' ``outage_grace`` (``SLUICE_OUTAGE_GRACE``,
  as a process with a connection of its own would): the process waits within
  its lease, which the runner's fencing bounds, instead of failing its run at
  once. After that the request is refused as StackUnavailable.

A frame that cannot be decoded is refused (id 0) and skipped; a length over
MAX_FRAME, or a process that hangs up mid-frame, ends the relay. The relay
flushes its outbox before it returns.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec

from engine._core.resume import read_events, read_task_records, rerun_requested
from engine._stack import relay_frames as frames
from engine._stack.object_results import ObjectResultStore
from engine._stack.outbox import Outbox
from engine._stack.reporter import until_available
from engine.client import Client
from engine.exceptions import MissingResult
from shared import names
from shared.errors import FlowRunNotFound, RequestError, SluiceError, StackUnavailable
from shared.messages import Decision, ProposedState
from shared.states import StateType

__all__ = ["Relay"]

T = TypeVar("T")
log = logging.getLogger("sluice.runner")
_json = msgspec.json.Encoder()

#: Seconds the relay spends storing the last records after its process hung up.
CLOSE_FLUSH_TIMEOUT = 30.0


class _Refuse(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Relay:
    """Serves one flow-run process's socket for run ``run_id`` at claim ``attempt``."""

    def __init__(
        self, client: Client, run_id: str, attempt: int, sock: socket.socket, *, runner: str
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.runner = runner
        self._sock = sock
        #: The runs this process may report for, with the claim attempt held for each.
        self.allowed: dict[str, int] = {run_id: attempt}
        self._results = ObjectResultStore(lambda *_: None, lambda: client.nc)
        self._write_lock = anyio.Lock()
        self._stream: anyio.abc.SocketStream | None = None
        self._outbox: Outbox | None = None
        #: Frames refused so far (for the runner's log and tests).
        self.refused = 0
        #: Frames read so far: none means the process never began its run (its
        #: first act is a log line, before any of the flow's code is loaded).
        self.frames = 0
        #: Whether the run's final state was accepted through us, for our claim.
        self.ended = False

    async def serve(self) -> None:
        """Relay until the process hangs up; then store what it sent and return."""
        stream = await anyio.abc.SocketStream.from_socket(self._sock)
        self._stream = stream
        outbox = self._outbox = Outbox(
            self.client.nc.jetstream(), grace=self.client.settings.outage_grace
        )
        try:
            async with anyio.create_task_group() as pump:
                pump.start_soon(outbox.run)
                try:
                    async with anyio.create_task_group() as requests:
                        await self._read(stream, requests)
                finally:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_FLUSH_TIMEOUT):
                        await outbox.flush()
                    pump.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _read(self, stream: anyio.abc.SocketStream, requests: anyio.abc.TaskGroup) -> None:
        buffer = bytearray()
        while True:
            while True:
                try:
                    body = frames.take_body(buffer)
                except frames.FrameTooLarge as exc:
                    await self._refused(0, f"{exc}; hanging up")
                    return
                if body is None:
                    break
                await self._frame(body, requests)
            try:
                chunk = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                if buffer:
                    log.warning(
                        "runner %s: the process of run %s hung up in the middle of a frame",
                        self.runner,
                        self.run_id,
                    )
                return
            buffer += chunk

    async def _frame(self, body: bytes, requests: anyio.abc.TaskGroup) -> None:
        self.frames += 1
        try:
            frame = frames.decode_to_runner(body)
        except msgspec.DecodeError as exc:
            await self._refused(0, f"an unreadable frame ({exc}) was skipped")
            return
        if isinstance(frame, frames.TaskRecord):
            record = frame.record
            held = self.allowed.get(record.flow_run_id)
            if held is None or record.flow_run_attempt != held:
                await self._refused(0, self._not_ours(record.flow_run_id, record.flow_run_attempt))
                return
            payload = _json.encode(record)
            subject = names.taskruns_subject(record.flow_run_id)
            assert self._outbox is not None
            self._outbox.put(subject, payload, record.task_run_id)
        elif isinstance(frame, frames.Log):
            if frame.record.flow_run_id not in self.allowed:
                await self._refused(0, self._not_ours(frame.record.flow_run_id))
                return
            assert self._outbox is not None
            subject = names.logs_subject(frame.record.flow_run_id)
            self._outbox.put(subject, _json.encode(frame.record))
        else:
            requests.start_soon(self._request, frame)

    def _not_ours(self, run_id: str, attempt: int | None = None) -> str:
        which = f"flow run {run_id}" + (f" (attempt {attempt})" if attempt is not None else "")
        return (
            f"{which} is not the run this process was started for ({self.run_id}, attempt "
            f"{self.allowed[self.run_id]}) nor a subflow it created"
        )

    async def _request(self, frame: Any) -> None:
        try:
            reply = await self._serve(frame)
        except _Refuse as exc:
            await self._refused(frame.id, exc.message)
            return
        except MissingResult as exc:
            reply = frames.Refused(id=frame.id, code="missing_result", message=str(exc))
        except SluiceError as exc:
            reply = frames.Refused(id=frame.id, code=exc.code, message=exc.message)
        except Exception as exc:
            log.exception("runner %s: relaying %s failed", self.runner, type(frame).__name__)
            reply = frames.Refused(id=frame.id, code="internal", message=repr(exc))
        await self._write(reply)

    async def _refused(self, ident: int, message: str) -> None:
        self.refused += 1
        log.warning("runner %s: refused a frame of run %s: %s", self.runner, self.run_id, message)
        await self._write(frames.Refused(id=ident, code=RequestError.code, message=message))

    async def _write(self, frame: Any) -> None:
        if self._stream is None:
            return
        data = frames.encode_frame(frame)
        try:
            async with self._write_lock:
                await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the process is gone; nobody waits for this reply

    async def _until_available(self, request: Callable[[], Awaitable[T]]) -> T:
        """``request()``, again while the stack cannot be reached (module docstring)."""

        def warn(exc: StackUnavailable) -> None:
            log.warning(
                "runner %s: run %s waits for the stack: %s", self.runner, self.run_id, exc.message
            )

        return await until_available(request, self.client.settings.outage_grace, warn)

    async def _serve(self, frame: Any) -> Any:
        client = self.client
        if isinstance(frame, frames.Propose):
            return await self._propose(frame)
        if isinstance(frame, frames.CreateSubflow):
            return await self._create_subflow(frame)
        if isinstance(frame, frames.Flush):
            assert self._outbox is not None
            await self._outbox.flush()
            return frames.Done(id=frame.id)
        if isinstance(frame, frames.PutResult):
            await self._until_available(lambda: self._results.put_async(frame.name, frame.data))
            return frames.Done(id=frame.id)
        if isinstance(frame, frames.GetResult):
            data = await self._until_available(lambda: self._results.get_async(frame.name))
            return frames.ResultData(id=frame.id, data=data)
        if isinstance(frame, frames.ReadRun):
            run = await self._until_available(lambda: client.read_flow_run(frame.run_id))
            return frames.RunRead(id=frame.id, run=run)
        if isinstance(frame, frames.ReadDeployment):
            deployment = await self._until_available(
                lambda: client.read_deployment(id=frame.deployment_id)
            )
            return frames.DeploymentRead(id=frame.id, deployment=deployment)
        if isinstance(frame, frames.ReadRecords):
            return await self._until_available(lambda: self._records(frame))
        raise _Refuse(f"{type(frame).__name__} frames are not served")

    async def _records(self, frame: frames.ReadRecords) -> frames.Records:
        run = await self.client.read_flow_run(frame.run_id)
        records = await read_task_records(self.client.nc, run.id)
        rerun = rerun_requested(await read_events(self.client.nc, run.id)) if records else []
        return frames.Records(id=frame.id, flow_name=run.flow_name, records=records, rerun=rerun)

    async def _propose(self, frame: frames.Propose) -> frames.ProposeResult:
        attempt = self.allowed.get(frame.run_id)
        if attempt is None:
            raise _Refuse(self._not_ours(frame.run_id))
        if frame.state.type is not StateType.RUNNING:
            assert self._outbox is not None
            await self._outbox.flush()
        reply = await self._until_available(
            lambda: self.client.propose_state(
                frame.run_id,
                frame.state,
                transition_id=frame.transition_id,
                attempt=attempt,
                retry=frame.retry,
                trace_headers=frame.trace_headers,
            )
        )
        if frame.run_id == self.run_id and reply.status is Decision.ACCEPT:
            self.ended = reply.state.is_terminal
        return frames.ProposeResult(id=frame.id, reply=reply)

    async def _create_subflow(self, frame: frames.CreateSubflow) -> frames.SubflowCreated:
        if frame.parent_flow_run_id not in self.allowed:
            raise _Refuse(self._not_ours(frame.parent_flow_run_id))
        run = await self._until_available(
            lambda: self.client.create_flow_run(
                flow_name=frame.flow_name,
                parameters=frame.parameters,
                parent_flow_run_id=frame.parent_flow_run_id,
                idempotency_key=frame.idempotency_key,
                agentless=True,
            )
        )
        if run.parent_flow_run_id != frame.parent_flow_run_id:
            raise FlowRunNotFound(f"flow run {run.id} is not a subflow of this run")
        transition_id = str(uuid.uuid4())
        claim = await self._until_available(
            lambda: self.client.propose_state(
                run.id,
                ProposedState(type=StateType.PENDING),
                transition_id=transition_id,
                runner=frame.runner or self.runner,
            )
        )
        if claim.status.value == "ACCEPT":
            self.allowed[run.id] = claim.attempt
        return frames.SubflowCreated(id=frame.id, run=run, claim=claim)
