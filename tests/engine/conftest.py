"""Fixtures for the local engine: a runtime whose reporter records and whose clock jumps."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest

from engine._core.cache import MemoryCache
from engine._core.context import Runtime, use_runtime
from engine._core.reporting import Decision, FlowRunInfo, Proposal, TaskRunInfo
from shared.clock import FakeClock
from shared.states import State


class JumpClock(FakeClock):
    """A fake clock that moves itself forward when slept on, so retries are instant."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[datetime] = []

    async def sleep_until(self, when: datetime) -> None:
        self.slept.append(when)
        if when > self.now():
            self.set(when)


class RecordingReporter:
    """Keeps every report, in order; thread-safe. ``answers`` scripts flow-state decisions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, State | None]] = []
        self.flow_runs: dict[str, FlowRunInfo] = {}
        self.task_runs: dict[str, TaskRunInfo] = {}
        self.records: list[logging.LogRecord] = []
        #: Decisions to give to the next proposals (ACCEPT when empty).
        self.answers: list[Proposal] = []
        self._lock = threading.Lock()

    def flow_run_created(self, run: FlowRunInfo) -> None:
        with self._lock:
            self.flow_runs[run.id] = run
            self.events.append(("flow_created", run.name, run.state))

    def propose_flow_state(self, run: FlowRunInfo, state: State) -> Proposal:
        with self._lock:
            self.events.append(("flow_proposed", run.name, state))
            if self.answers:
                return self.answers.pop(0)
        return Proposal(Decision.ACCEPT, state)

    def task_run_created(self, run: TaskRunInfo) -> None:
        with self._lock:
            self.task_runs[run.id] = run
            self.events.append(("task_created", run.name, run.state))

    def task_run_state(self, run: TaskRunInfo, state: State) -> None:
        with self._lock:
            self.events.append(("task_state", run.name, state))

    def log(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)

    def task_states(self, name: str) -> list[State]:
        """States reported for the task run called ``name``, creation included."""
        return [s for kind, n, s in self.events if n == name and kind.startswith("task") and s]

    def flow_states(self, name_prefix: str = "") -> list[State]:
        return [
            s
            for kind, n, s in self.events
            if kind.startswith("flow") and n.startswith(name_prefix) and s
        ]


@pytest.fixture
def clock() -> JumpClock:
    return JumpClock()


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
def runtime(clock: JumpClock, reporter: RecordingReporter) -> Iterator[Runtime]:
    """A private runtime for each test, installed for the flows it starts."""
    rt = Runtime(reporter=reporter, clock=clock, cache=MemoryCache(), random=lambda: 0.5)
    with use_runtime(rt):
        yield rt
