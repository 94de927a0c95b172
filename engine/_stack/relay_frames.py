"""The wire contract between a flow-run process and its runner's relay: every frame, here.

A runner hands each local flow-run process (a fresh subprocess, a standby, a
fork server's child) one end of a unix socketpair; the process holds no NATS
connection of its own. Everything it reports or reads for its run travels as
frames on that socket, and the runner's relay (:mod:`engine.runner._relay`)
checks each one and sends it on over the runner's own connection.

**Framing.** A frame is a 4-byte big-endian length, then that many bytes of
msgpack: one of the tagged structs below (``msgspec`` picks the type from
its ``type`` tag). Frames larger than :data:`MAX_FRAME` are refused.

**Requests and replies.** A request frame carries an ``id`` (unique per
process, never 0); the relay answers it with exactly one reply frame with
that id: the request's own reply type, or :class:`Refused` with a
:class:`~shared.errors.SluiceError` code and message, which the process
raises as that error. :class:`TaskRecord` and :class:`Log` get no reply;
one the relay refuses (it is for another run) is answered with a
:class:`Refused` of id 0, which the process writes to its stderr.
Replies may come in any order (the relay works on requests concurrently).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from shared.messages import LogRecord, ProposedState, ProposeReply, TaskRunRecord
from shared.models import Deployment, FlowRun

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "CreateSubflow",
    "DeploymentRead",
    "Done",
    "Flush",
    "FrameTooLarge",
    "GetResult",
    "Log",
    "Propose",
    "ProposeResult",
    "PutResult",
    "ReadDeployment",
    "ReadRecords",
    "ReadRun",
    "Records",
    "Refused",
    "Request",
    "ResultData",
    "RunRead",
    "SubflowCreated",
    "TaskRecord",
    "ToProcess",
    "ToRunner",
    "decode_to_process",
    "decode_to_runner",
    "encode_frame",
    "take_body",
]

#: The length prefix: 4 bytes, big-endian, unsigned.
HEADER = struct.Struct(">I")
#: Largest frame either side accepts (results travel in frames too).
MAX_FRAME = 64 * 1024 * 1024


class _Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    pass


class Request(_Frame, frozen=True, kw_only=True):
    id: int


# --- process -> runner --------------------------------------------------------------------
class Propose(Request, frozen=True, kw_only=True, tag="propose"):
    """Propose a state of ``run_id`` with the claim attempt the runner holds for it."""

    run_id: str
    state: ProposedState
    transition_id: str
    retry: bool = False
    #: The trace context of the process's ``send flowrun.state.propose`` span,
    #: sent on with the request so the orchestrator's span is its child.
    trace_headers: dict[str, str] | None = None


class CreateSubflow(Request, frozen=True, kw_only=True, tag="create_subflow"):
    """Create a subflow run of ``parent_flow_run_id`` (agentless), claimed by the relay."""

    flow_name: str
    parent_flow_run_id: str
    idempotency_key: str
    parameters: dict[str, Any] = {}
    #: Who the claim names as the run's holder (a label: ``engine@<host>:<pid>``).
    runner: str = ""


class TaskRecord(_Frame, frozen=True, kw_only=True, tag="task_record"):
    record: TaskRunRecord


class Log(_Frame, frozen=True, kw_only=True, tag="log"):
    record: LogRecord


class PutResult(Request, frozen=True, kw_only=True, tag="put_result"):
    name: str
    data: bytes


class GetResult(Request, frozen=True, kw_only=True, tag="get_result"):
    name: str


class ReadRun(Request, frozen=True, kw_only=True, tag="read_run"):
    run_id: str


class ReadDeployment(Request, frozen=True, kw_only=True, tag="read_deployment"):
    deployment_id: str


class ReadRecords(Request, frozen=True, kw_only=True, tag="read_records"):
    """A run's task-run records (resuming, ``from_run``), with its rerun requests."""

    run_id: str


class Flush(Request, frozen=True, kw_only=True, tag="flush"):
    """Reply once every record and log line sent before is stored."""


# --- runner -> process --------------------------------------------------------------------
class ProposeResult(Request, frozen=True, kw_only=True, tag="propose_result"):
    reply: ProposeReply


class SubflowCreated(Request, frozen=True, kw_only=True, tag="subflow_created"):
    run: FlowRun
    claim: ProposeReply


class ResultData(Request, frozen=True, kw_only=True, tag="result_data"):
    data: bytes


class RunRead(Request, frozen=True, kw_only=True, tag="run_read"):
    run: FlowRun


class DeploymentRead(Request, frozen=True, kw_only=True, tag="deployment_read"):
    deployment: Deployment


class Records(Request, frozen=True, kw_only=True, tag="records"):
    flow_name: str
    records: list[TaskRunRecord]
    rerun: list[str] = []


class Done(Request, frozen=True, kw_only=True, tag="done"):
    pass


class Refused(Request, frozen=True, kw_only=True, tag="refused"):
    """A request (or, with id 0, a record) the relay did not carry out, and why."""

    code: str
    message: str


ToRunner = (
    Propose
    | CreateSubflow
    | TaskRecord
    | Log
    | PutResult
    | GetResult
    | ReadRun
    | ReadDeployment
    | ReadRecords
    | Flush
)
ToProcess = (
    ProposeResult
    | SubflowCreated
    | ResultData
    | RunRead
    | DeploymentRead
    | Records
    | Done
    | Refused
)

_encoder = msgspec.msgpack.Encoder()
_to_runner = msgspec.msgpack.Decoder(ToRunner)
_to_process = msgspec.msgpack.Decoder(ToProcess)


def encode_frame(frame: _Frame) -> bytes:
    """The frame with its length prefix, ready to write."""
    body = _encoder.encode(frame)
    return HEADER.pack(len(body)) + body


class FrameTooLarge(ValueError):
    """A length prefix over :data:`MAX_FRAME`: the stream cannot be trusted further."""


def take_body(buffer: bytearray) -> bytes | None:
    """Remove the first whole frame from ``buffer`` and return its body; None
    while it is not whole yet. Raises FrameTooLarge."""
    if len(buffer) < HEADER.size:
        return None
    (length,) = HEADER.unpack_from(buffer)
    if length > MAX_FRAME:
        raise FrameTooLarge(f"a frame of {length} bytes is too large")
    end = HEADER.size + length
    if len(buffer) < end:
        return None
    body = bytes(buffer[HEADER.size : end])
    del buffer[:end]
    return body


def decode_to_runner(body: bytes) -> ToRunner:
    """A frame's body from a process. Raises msgspec.DecodeError (ValidationError)."""
    return _to_runner.decode(body)


def decode_to_process(body: bytes) -> ToProcess:
    """A frame's body from the relay. Raises msgspec.DecodeError (ValidationError)."""
    return _to_process.decode(body)
