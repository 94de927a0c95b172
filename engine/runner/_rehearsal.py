"""A rehearsal of a forked run, played by the fork server before it forks.

A forked run's process writes to every memory page that holds an object it
uses, and its first write to each page is a copy-on-write fault (2.6 µs of
CPU on our 2-core machine; a trivial run takes ~1,500). CPython 3.11 writes
reference counts, and its adaptive interpreter also writes the code it runs:
a function's first calls count down in its code object, which is then
rewritten with specialised instructions. Code the server has already run
many times is specialised already, so a child that runs it writes fewer
pages. Measured in a forked child: a logged line went from 179 faults to 124
once the server had logged lines before, and loading a flow file from 533
to 388.

So the server plays what every run does, a few times, with nothing leaving
the process: it loads a flow file (this package's own, from disk, as a run
loads its deployment's), and executes it as a run through the same engine
path (an assignment line decoded, :func:`engine._stack.execute.execute_flow_run`
in its trace span, the outcome reported), reporting through a
:class:`~engine._stack.pipe_reporter.PipeReporter` whose relay is a thread
here that accepts every state, and with the run's log lines going nowhere.
A rehearsal that fails costs only that saving: it is reported and ignored.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from engine._stack import relay_frames as frames
from engine._stack.execute import execute_flow_run
from engine._stack.pipe_reporter import PipeReporter
from engine.runner._process import report_outcome, traced_execution
from engine.runner._standby import Assignment, encode_assignment
from shared.messages import Decision, ProposeReply
from shared.models import Deployment, FlowRun
from shared.states import DEFAULT_NAMES, State, StateType

__all__ = ["rehearse"]

#: Enough calls for CPython 3.11 to specialise the code a run executes.
TIMES = 16
_FLOW = Path(__file__).with_name("_rehearsal_flow.py")


def rehearse(times: int = TIMES) -> None:
    """Execute a do-nothing run ``times`` times in this process (module docstring)."""
    loaded, path = set(sys.modules), list(sys.path)
    try:
        with _quiet():
            for _ in range(times):
                _once()
    except Exception as exc:  # only a saving is lost
        print(f"fork server: the rehearsal failed ({exc!r}); runs cost more CPU", file=sys.stderr)
    finally:
        for name in set(sys.modules) - loaded:  # the flow file: each run loads its own
            if name.startswith("sluice_flows_"):
                del sys.modules[name]
        sys.path[:] = path  # loading it put its folder first


def _once() -> None:
    now = datetime.now(UTC)
    running = State(type=StateType.RUNNING, name="Running", timestamp=now)
    deployment = Deployment(
        id="rehearsal",
        name="rehearsal",
        flow_name="sluice-fork-rehearsal",
        entrypoint=f"{_FLOW.name}:rehearsal",
        path=str(_FLOW.parent),
        created=now,
        updated=now,
    )
    run = FlowRun(
        id="rehearsal",
        name="rehearsal",
        flow_name="sluice-fork-rehearsal",
        deployment_id="rehearsal",
        state=State(type=StateType.PENDING, name="Pending", timestamp=now),
        created=now,
        updated=now,
        expected_start_time=now,
        attempt=1,
    )
    # As a run gets it: an assignment line, and a relay socket's descriptor.
    line = encode_assignment(Assignment(run_id=run.id, attempt=1, run=run, deployment=deployment))
    assignment = msgspec.json.decode(line, type=Assignment)
    ours, theirs = socket.socketpair()
    relay = threading.Thread(target=_relay, args=(theirs, running), daemon=True)
    relay.start()
    try:
        reporter = PipeReporter.from_fd(ours.detach())
        with traced_execution(assignment.run_id), reporter:
            outcome = execute_flow_run(
                reporter,
                assignment.run_id,
                attempt=assignment.attempt,
                run=assignment.run,
                deployment=assignment.deployment,
            )
        report_outcome(outcome)
    finally:
        relay.join(timeout=5)  # no thread may be left when the server forks
        theirs.close()


def _relay(sock: socket.socket, running: State) -> None:
    """Answer every request as an accepting relay would, until the process hangs up."""
    buffer = bytearray()
    while chunk := sock.recv(65536):
        buffer += chunk
        while (body := frames.take_body(buffer)) is not None:
            reply = _answer(frames.decode_to_runner(body), running)
            if reply is not None:
                sock.sendall(frames.encode_frame(reply))


def _answer(frame: frames.ToRunner, running: State) -> frames.ToProcess | None:
    if isinstance(frame, frames.Propose):
        wanted = frame.state
        state = State(
            type=wanted.type,
            name=wanted.name or DEFAULT_NAMES[wanted.type],
            timestamp=running.timestamp,
            message=wanted.message,
            details=wanted.details,
            data=wanted.data,
        )
        reply = ProposeReply(status=Decision.ACCEPT, state=state, attempt=1)
        return frames.ProposeResult(id=frame.id, reply=reply)
    if isinstance(frame, frames.TaskRecord | frames.Log):
        return None
    return frames.Done(id=frame.id)  # a flush, a result put: done


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The run's log lines go nowhere while rehearsing (the echo handler is
    pointed at a dummy stream), and so does what it prints."""
    handlers = list(  # one handler may serve both loggers: each once
        {
            id(h): h
            for name in ("sluice.runs", "sluice.engine")
            for h in logging.getLogger(name).handlers
            if isinstance(h, logging.StreamHandler)
        }.values()
    )
    sink = io.StringIO()
    streams = [h.setStream(sink) for h in handlers]
    stderr, sys.stderr = sys.stderr, sink
    try:
        yield
    finally:
        sys.stderr = stderr
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)
