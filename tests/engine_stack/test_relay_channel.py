"""The process's end of the relay: replies reach the thread that asked, with no reader thread.

A fast test of the transport alone, against a scripted peer on a socketpair;
the runner's real relay is exercised end to end in tests/runner/test_relay.py.
"""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime

import pytest

from engine._stack import relay_frames as frames
from engine._stack.relay_channel import RelayChannel
from shared.errors import FlowRunNotFound, SluiceError, StackUnavailable
from shared.messages import LogRecord


def _read_frames(sock: socket.socket, count: int) -> list[frames.ToRunner]:
    got: list[frames.ToRunner] = []
    buffer = bytearray()
    while len(got) < count:
        buffer += sock.recv(65536)
        while (body := frames.take_body(buffer)) is not None:
            got.append(frames.decode_to_runner(body))
    return got


def _ask_all(channel: RelayChannel, names: list[str]) -> tuple[list[threading.Thread], dict]:
    answers: dict[str, BaseException] = {}

    def ask(name: str) -> None:
        try:
            channel.request(frames.ReadRun(id=0, run_id=name))
        except BaseException as exc:  # the answer is the error
            answers[name] = exc

    threads = [threading.Thread(target=ask, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    return threads, answers


def test_each_thread_gets_its_own_reply_in_whatever_order_they_come() -> None:
    ours, peer = socket.socketpair()
    channel = RelayChannel(ours)
    names = [f"run-{i}" for i in range(6)]
    threads, answers = _ask_all(channel, names)
    asked = _read_frames(peer, len(names))
    # Answered last first: whoever reads hands every other reply over.
    for frame in reversed(asked):
        assert isinstance(frame, frames.ReadRun)
        reply = frames.Refused(id=frame.id, code="flow_run_not_found", message=frame.run_id)
        peer.sendall(frames.encode_frame(reply))
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(answers) == names
    for name, error in answers.items():
        assert isinstance(error, FlowRunNotFound)
        assert str(error.message) == name  # its own reply, not another thread's
    channel.close("done")
    peer.close()


def test_a_relay_that_hangs_up_fails_every_waiting_request() -> None:
    ours, peer = socket.socketpair()
    channel = RelayChannel(ours)
    threads, answers = _ask_all(channel, ["a", "b", "c"])
    _read_frames(peer, 3)
    peer.close()
    for thread in threads:
        thread.join(timeout=60)
    assert all(isinstance(e, StackUnavailable) for e in answers.values()), answers
    assert len(answers) == 3
    with pytest.raises(StackUnavailable, match="hung up"):
        channel.request(frames.Flush(id=0))
    channel.close("done")


def test_a_record_sent_after_the_last_flushing_request_is_known_unflushed() -> None:
    """A run's process flushes on closing only when a record went out after its
    final state, which the relay stored everything before."""
    ours, peer = socket.socketpair()
    channel = RelayChannel(ours)
    assert not channel.unflushed
    record = frames.Log(
        record=LogRecord(
            flow_run_id="r", timestamp=datetime.now(UTC), level=20, message="hi", logger="x"
        )
    )
    channel.post(record)
    assert channel.unflushed

    def answer(count: int, refuse: bool = False) -> None:
        for frame in _read_frames(peer, count):
            if isinstance(frame, frames.Flush):
                no = frames.Refused(id=frame.id, code="x", message="no")
                peer.sendall(frames.encode_frame(no if refuse else frames.Done(id=frame.id)))

    peer_thread = threading.Thread(target=answer, args=(2,))
    peer_thread.start()
    channel.request(frames.Flush(id=0), flushes=True)
    peer_thread.join(timeout=60)
    assert not channel.unflushed
    # A refused flushing request may not have stored anything: unflushed again.
    peer_thread = threading.Thread(target=answer, args=(1, True))
    peer_thread.start()
    with pytest.raises(SluiceError):
        channel.request(frames.Flush(id=0), flushes=True)
    peer_thread.join(timeout=60)
    assert channel.unflushed
    channel.close("done")
    peer.close()
