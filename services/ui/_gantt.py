"""Task runs over time: attempts folded from task-run records, and a Gantt laid out as SVG.

Pure functions; the clock comes in as ``now``. A task run's *attempts* are
its spans in RUNNING, each ended by the next record that leaves RUNNING
(Completed, Failed, AwaitingRetry, ...). They come from the task-run records
themselves, so a task retried inside one flow-run attempt shows two spans
while the flow run's claim count stays 1. The same fold gives a flow run's
attempts from its state timeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shared.messages import TaskRunRecord
from shared.states import AWAITING_RETRY, State, StateType

__all__ = [
    "Attempt",
    "Bar",
    "Edge",
    "Gantt",
    "TaskRunView",
    "attempts_of",
    "fold_task_runs",
    "layout",
]


@dataclass(frozen=True)
class Attempt:
    started: datetime
    ended: datetime | None
    """None while it still runs."""
    outcome: State | None
    """The state that ended it (None while running)."""

    def seconds(self, now: datetime) -> float:
        return ((self.ended or now) - self.started).total_seconds()


def attempts_of(states: Iterable[State]) -> list[Attempt]:
    """The attempts in a sequence of states, oldest first.

    An attempt runs from its RUNNING state to the next state that ends it
    (a terminal one, or SCHEDULED such as AwaitingRetry). The engine leaves
    out the RUNNING record of a quick step, so when there is none the
    attempt is taken to start at the Pending record before it (the first
    attempt) or when the retry was due (``scheduled_time`` of the
    AwaitingRetry that ended the one before).
    """
    out: list[Attempt] = []
    began: datetime | None = None  # a RUNNING state seen
    due: datetime | None = None  # where the attempt starts if no RUNNING state comes
    before: State | None = None
    for state in states:
        kind = state.type
        if kind is StateType.RUNNING:
            began = began or state.timestamp
        elif kind is StateType.PENDING:
            due = due or state.timestamp
        elif state.is_terminal or (kind is StateType.SCHEDULED and (began or due)):
            start = began or due
            if start is not None:
                out.append(Attempt(min(start, state.timestamp), state.timestamp, state))
            began = None
            due = None if state.is_terminal else state.details.scheduled_time
        elif _is_retry_wait(state) and not (before is not None and before.is_terminal):
            # A try that failed so fast that even its Pending record was left
            # out: it ran at most since the record before (or only now).
            start = before.timestamp if before is not None else state.timestamp
            out.append(Attempt(min(start, state.timestamp), state.timestamp, state))
            due = state.details.scheduled_time
        before = state
    if began is not None:
        out.append(Attempt(started=began, ended=None, outcome=None))
    return out


def _is_retry_wait(state: State) -> bool:
    return state.type is StateType.SCHEDULED and (
        state.name == AWAITING_RETRY or state.details.retry_count is not None
    )


@dataclass
class TaskRunView:
    task_run_id: str
    name: str
    task_key: str
    state: State
    flow_run_attempt: int
    states: list[State] = field(default_factory=list)
    upstream: list[str] = field(default_factory=list)

    @property
    def attempts(self) -> list[Attempt]:
        return attempts_of(self.states)

    @property
    def attempt(self) -> int:
        """How many times the task ran (1 for a task that ended without a Running record)."""
        return max(1, len(self.attempts)) if self.states else 0

    @property
    def started(self) -> datetime | None:
        found = self.attempts
        if found:
            return found[0].started
        return self.state.timestamp if self.state.is_terminal else None

    @property
    def ended(self) -> datetime | None:
        return self.state.timestamp if self.state.is_terminal else None


def fold_task_runs(records: Iterable[TaskRunRecord]) -> list[TaskRunView]:
    """Each task run with every state it reported, in the order the tasks were called."""
    views: dict[str, TaskRunView] = {}
    for record in records:
        view = views.get(record.task_run_id)
        if view is None:
            view = views[record.task_run_id] = TaskRunView(
                task_run_id=record.task_run_id,
                name=record.name,
                task_key=record.task_key,
                state=record.state,
                flow_run_attempt=record.flow_run_attempt,
                upstream=list(record.upstream_ids),
            )
        if record.state.timestamp >= view.state.timestamp:
            view.state = record.state
        view.states.append(record.state)
    for view in views.values():
        # Records of one task come from one process in order, but a replay
        # after a reconnect may repeat one: order by time, drop exact repeats.
        unique = {(s.timestamp, s.type, s.name): s for s in view.states}
        view.states = sorted(unique.values(), key=lambda s: s.timestamp)
    return list(views.values())


# --- layout --------------------------------------------------------------------------
ROW = 24
LABEL = 200
WIDTH = 1000
TOP = 22


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    css: str
    title: str
    attempt: int


@dataclass(frozen=True)
class Row:
    y: float
    view: TaskRunView
    bars: list[Bar]


@dataclass(frozen=True)
class Edge:
    path: str
    upstream: str
    downstream: str


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class Gantt:
    rows: list[Row]
    edges: list[Edge]
    ticks: list[Tick]
    height: int
    width: int = WIDTH
    label_width: int = LABEL


def _offset(seconds: float) -> str:
    if seconds < 10:
        return f"+{seconds:.2f}s" if seconds < 1 else f"+{seconds:.1f}s"
    if seconds < 120:
        return f"+{seconds:.0f}s"
    if seconds < 7200:
        return f"+{seconds / 60:.1f}m"
    return f"+{seconds / 3600:.1f}h"


def _css(state: State | None) -> str:
    if state is None:
        return "st-running"
    if state.name == "AwaitingRetry":
        return "st-awaitingretry"
    return f"st-{state.type.value.lower()}"


def layout(views: list[TaskRunView], now: datetime) -> Gantt:
    """Bars on one time axis: one row per task run, one bar per attempt, edges to upstreams."""
    spans = [(a.started, a.ended or now) for v in views for a in v.attempts]
    spans += [(v.state.timestamp, v.state.timestamp) for v in views if not v.attempts]
    if not spans:
        return Gantt(rows=[], edges=[], ticks=[], height=0)
    t0 = min(s for s, _ in spans)
    total = max(0.001, max((e - t0).total_seconds() for _, e in spans))
    scale = (WIDTH - LABEL - 10) / total

    def x(at: datetime) -> float:
        return round(LABEL + (at - t0).total_seconds() * scale, 2)

    rows: list[Row] = []
    where: dict[str, tuple[float, float, float]] = {}  # id -> (first x, last x end, y mid)
    for n, view in enumerate(views):
        y = TOP + n * ROW
        bars = []
        for k, attempt in enumerate(view.attempts, start=1):
            left = x(attempt.started)
            width = max(2.0, x(attempt.ended or now) - left)
            outcome = attempt.outcome.name if attempt.outcome else "still running"
            began = attempt.started.strftime("%H:%M:%S.%f")[:-3]
            title = (
                f"{view.name}: attempt {k}, {attempt.seconds(now):.3f}s, {outcome} ({began} UTC)"
            )
            bars.append(Bar(left, width, _css(attempt.outcome), title, k))
        if not bars:
            # Ended without a Running record (cached, or cancelled before it ran).
            left = x(view.state.timestamp)
            bars.append(Bar(left, 3.0, _css(view.state), f"{view.name}: {view.state.name}", 0))
        rows.append(Row(y=y, view=view, bars=bars))
        where[view.task_run_id] = (bars[0].x, bars[-1].x + bars[-1].width, y + ROW / 2 - 2)
    edges = []
    for row in rows:
        for up in row.view.upstream:
            if up not in where:
                continue
            _, x1, y1 = where[up]
            x2, _, y2 = where[row.view.task_run_id]
            bend = max(12.0, (x2 - x1) / 2)
            path = (
                f"M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} "
                f"{x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            )
            edges.append(Edge(path=path, upstream=up, downstream=row.view.task_run_id))
    ticks = [
        Tick(x=LABEL + i * (WIDTH - LABEL - 10) / 4, label=_offset(total * i / 4)) for i in range(5)
    ]
    return Gantt(rows=rows, edges=edges, ticks=ticks, height=TOP + len(rows) * ROW + 6)
