"""What flow bodies really did, from the journal they write (``_flowproc.py``).

The orchestrator's timestamps say when a run's *state* changed; a body may
run on after its state says otherwise (that is what fencing is about), so
these invariants are judged on the journal, the ground truth:

* no body after Cancelled or Crashed: no line of a run's attempt is later
  than a Cancelled or Crashed mark of that attempt (or a later one);
* bodies never exceed the limit: at no instant more bodies of a deployment
  executing than its concurrency limit;
* a body runs under one claim unless the run was retried: bodies of two
  attempts of one run never overlap, and a run that was never retried has
  bodies of one attempt only.

A body's interval runs from its ``start`` line to its last line. A killed body
stopped at most one tick (20 ms) after its last line, so an overlap of less
than that may go unseen; the margin fencing keeps is a quarter of the lease
(250 ms in these tests), far above it.

Pure: :func:`read_journal` parses, :func:`check_bodies` judges a snapshot.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from shared.states import TERMINAL_TYPES, StateType

from ._checker import Report, Snapshot


@dataclass
class Body:
    run_id: str
    attempt: int
    start: float
    last: float
    ended: bool = False


def read_journal(path: Path) -> list[Body]:
    bodies: dict[tuple[str, int], Body] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue  # a line cut by a SIGKILL mid-write
        run_id, attempt, what, at = parts[0], int(parts[1]), parts[2], float(parts[3])
        body = bodies.setdefault((run_id, attempt), Body(run_id, attempt, at, at))
        body.start, body.last = min(body.start, at), max(body.last, at)
        body.ended = body.ended or what == "end"
    return list(bodies.values())


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    points = [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans]
    best = now = 0
    for _, step in sorted(points):  # an end at t closes before a start at t
        now += step
        best = max(best, now)
    return best


def no_body_after_the_end(bodies: list[Body], snap: Snapshot) -> list[str]:
    out = []
    by_run: dict[str, list[Body]] = defaultdict(list)
    for body in bodies:
        by_run[body.run_id].append(body)
    for run_id, events in snap.events.items():
        for event in events:
            state = event.flow_run.state
            if state.type not in (StateType.CANCELLED, StateType.CRASHED):
                continue
            marked = state.timestamp.timestamp()
            for body in by_run.get(run_id, []):
                if body.attempt <= event.flow_run.attempt and body.last > marked:
                    out.append(
                        f"run {run_id} attempt {body.attempt}: body ran {body.last - marked:.3f}s "
                        f"after it was marked {state.describe()}"
                    )
    return out


def bodies_within_limit(bodies: list[Body], snap: Snapshot, report: Report) -> list[str]:
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for body in bodies:
        run = snap.runs.get(body.run_id)
        if run is not None and run.deployment_id is not None:
            spans[run.deployment_id].append((body.start, body.last))
    out = []
    for dep, dep_spans in spans.items():
        seen = report.max_bodies[dep] = _max_overlap(dep_spans)
        deployment = snap.deployments.get(dep)
        limit = deployment.concurrency_limit if deployment else None
        if limit is not None and seen > limit:
            out.append(f"deployment {dep}: {seen} bodies executing at once, limit {limit}")
    return out


def _retried(snap: Snapshot, run_id: str) -> bool:
    events = snap.events.get(run_id, [])
    return any(
        before.flow_run.state.type in TERMINAL_TYPES
        and after.flow_run.state.type is StateType.SCHEDULED
        for before, after in itertools.pairwise(events)
    )


def one_claim_per_body(bodies: list[Body], snap: Snapshot) -> list[str]:
    by_run: dict[str, list[Body]] = defaultdict(list)
    for body in bodies:
        by_run[body.run_id].append(body)
    out = []
    for run_id, runs in by_run.items():
        if _max_overlap([(b.start, b.last) for b in runs]) > 1:
            out.append(
                f"run {run_id}: bodies of attempts {sorted(b.attempt for b in runs)} overlap"
            )
        elif len(runs) > 1 and not _retried(snap, run_id):
            out.append(
                f"run {run_id}: bodies under claims {sorted(b.attempt for b in runs)} "
                "though it was never retried"
            )
    return out


def check_bodies(bodies: list[Body], snap: Snapshot, report: Report) -> list[str]:
    report.bodies = len(bodies)
    return (
        no_body_after_the_end(bodies, snap)
        + bodies_within_limit(bodies, snap, report)
        + one_claim_per_body(bodies, snap)
    )
