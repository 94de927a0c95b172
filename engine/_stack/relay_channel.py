"""The process's end of its runner's relay socket: frames out, replies back by request id.

:class:`RelayChannel` is the transport under
:class:`~engine._stack.pipe_reporter.PipeReporter`: it writes
:mod:`engine._stack.relay_frames` frames, length-prefixed, and matches each
reply to the request that asked for it.

There is no reader thread. A thread that waits for a reply reads the
socket itself, and hands every other reply it reads to the thread that
asked for it; when several threads wait, one reads at a time and, when its
own reply has come, leaves the reading to the next. In a process forked
from a large parent, starting a thread costs a few hundred copy-on-write
page faults (about half a millisecond of CPU), and handing each reply from
a reader thread to the caller costs two thread switches, so a trivial run
now starts none and switches none.
"""

from __future__ import annotations

import socket
import sys
import threading
from concurrent.futures import Future
from contextlib import suppress
from typing import Any

import msgspec

from engine._stack import relay_frames as frames
from engine.exceptions import MissingResult
from shared.errors import ErrorBody, StackUnavailable, error_from_body

__all__ = ["RelayChannel"]


class RelayChannel:
    """Frames to and from the runner's relay over ``sock``. Thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._write_lock = threading.Lock()
        #: Guards what follows; threads waiting for a reply wait on it.
        self._lock = threading.Condition()
        self._pending: dict[int, Future[frames.ToProcess]] = {}
        self._next_id = 0
        #: Why no more frames can be exchanged (None: they can).
        self.closed: str | None = None
        #: Whether a thread is reading the socket now (one at a time).
        self._reading = False
        #: Whether a frame without reply was sent since the last request that
        #: has the relay store them first (see :meth:`request`).
        self.unflushed = False

    def request(self, frame: Any, *, flushes: bool = False) -> frames.ToProcess:
        """Send a request frame (its id is set here) and wait for its reply.

        ``flushes``: the relay stores every frame sent before this one before
        it answers (a Flush, a proposal of a state other than RUNNING), so
        :attr:`unflushed` is false again. Raises the error a Refused reply
        names, StackUnavailable when the relay is gone.
        """
        future: Future[frames.ToProcess] = Future()
        with self._lock:
            if self.closed is not None:
                raise StackUnavailable(self.closed)
            self._next_id += 1
            ident = self._next_id
            self._pending[ident] = future
        try:
            self._send(msgspec.structs.replace(frame, id=ident), False if flushes else None)
        except OSError as exc:
            with self._lock:
                self._pending.pop(ident, None)
            raise StackUnavailable(f"the runner's relay cannot be reached: {exc}") from None
        reply = self._wait(future)
        if isinstance(reply, frames.Refused):
            if flushes:
                self.unflushed = True  # it may have been refused before it stored them
            if reply.code == "missing_result":
                raise MissingResult(reply.message)
            raise error_from_body(ErrorBody(code=reply.code, message=reply.message))
        return reply

    def post(self, frame: Any) -> None:
        """Send a frame that has no reply; nothing if the relay is gone (the
        next request says so)."""
        if self.closed is not None:
            return
        with suppress(OSError):
            self._send(frame, True)

    def close(self, reason: str) -> None:
        """Fail every request still waiting with ``reason``, and hang up."""
        self._fail_all(reason)
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _send(self, frame: Any, unflushed: bool | None) -> None:
        """Write ``frame``; then set :attr:`unflushed` (None: leave it), in the
        same order as the frames."""
        data = frames.encode_frame(frame)
        with self._write_lock:
            self._sock.sendall(data)
            if unflushed is not None:
                self.unflushed = unflushed

    def _wait(self, future: Future[frames.ToProcess]) -> frames.ToProcess:
        """The reply ``future`` waits for: read by this thread, or by another
        thread that reads now and hands it over."""
        with self._lock:
            self._lock.wait_for(lambda: future.done() or not self._reading)
            if future.done():
                return future.result()
            self._reading = True
        try:
            while not future.done():
                gone = self._read_one()
                if gone is not None:
                    self._fail_all(gone)
        finally:
            with self._lock:
                self._reading = False
                self._lock.notify_all()  # a thread still waiting reads on
        return future.result()

    def _read_one(self) -> str | None:
        """Read one frame and deliver it; why the relay is gone, if it is."""
        try:
            header = self._recv_exactly(frames.HEADER.size)
            if header is None:
                return "the runner's relay hung up"
            (length,) = frames.HEADER.unpack(header)
            if length > frames.MAX_FRAME:
                return f"the relay sent a frame of {length} bytes"
            body = self._recv_exactly(length)
            if body is None:
                return "the runner's relay hung up"
            self._deliver(frames.decode_to_process(body))
        except (OSError, msgspec.DecodeError) as exc:
            return f"the relay connection failed: {exc}"
        return None

    def _recv_exactly(self, size: int) -> bytes | None:
        chunks, left = [], size
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _deliver(self, frame: frames.ToProcess) -> None:
        if frame.id == 0:
            if isinstance(frame, frames.Refused):
                print(f"error: the runner refused a record: {frame.message}", file=sys.stderr)
            return
        with self._lock:
            future = self._pending.pop(frame.id, None)
            if future is not None:
                future.set_result(frame)
                self._lock.notify_all()

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            self.closed = self.closed or reason
            pending, self._pending = self._pending, {}
            for future in pending.values():
                future.set_exception(StackUnavailable(reason))
            self._lock.notify_all()
