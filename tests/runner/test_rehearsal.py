"""The fork server's rehearsal: a real run of the engine in the server, leaving nothing behind."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from engine.runner import _process, _rehearsal


@pytest.fixture
def echoing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The run's loggers echo to (this test's) stderr, as in the fork server."""
    loggers = [logging.getLogger(name) for name in ("sluice.runs", "sluice.engine")]
    before = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    monkeypatch.setattr(_process, "_echoing", False)
    _process.echo_run_logs()
    yield
    for lg, (handlers, level, propagate) in zip(loggers, before, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.usefixtures("echoing")
def test_a_rehearsal_executes_a_run_and_leaves_the_process_as_it_was(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handlers = logging.getLogger("sluice.engine").handlers
    streams = [getattr(h, "stream", None) for h in handlers]
    modules, path = set(sys.modules), list(sys.path)
    threads = set(threading.enumerate())  # other tests may have left some
    seen: list[str] = []
    answer = _rehearsal._answer

    def spy(frame: object, running: object) -> object:
        seen.append(type(frame).__name__)
        return answer(frame, running)  # type: ignore[arg-type]

    _rehearsal._answer = spy  # type: ignore[assignment]
    try:
        _rehearsal.rehearse(times=2)
    finally:
        _rehearsal._answer = answer
    # The run's real path: its log line, then Running and Completed, twice.
    assert seen == ["Log", "Propose", "Propose"] * 2
    assert set(threading.enumerate()) <= threads  # the server forks with no other thread
    assert not [m for m in set(sys.modules) - modules if m.startswith("sluice_flows_")]
    assert sys.path == path
    assert [getattr(h, "stream", None) for h in handlers] == streams
    assert capsys.readouterr().err == ""  # nothing printed: its lines went nowhere


def test_a_failing_rehearsal_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> None:
        raise RuntimeError("no engine today")

    monkeypatch.setattr(_rehearsal, "_once", broken)
    _rehearsal.rehearse(times=1)
    assert "the rehearsal failed (RuntimeError('no engine today'))" in capsys.readouterr().err
