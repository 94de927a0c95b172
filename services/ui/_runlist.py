"""The runs list: its query (states, time range, recent or upcoming), labels, and activity.

*Recent* runs are those whose expected start has come, newest first (a run's
expected start is when it started, or was due to); *upcoming* ones are due
later, soonest first. Every run is in exactly one of the two. The stack
sorts newest first; the upcoming tab reads the same order from the other end
(it asks for the total and takes the matching slice), so paging stays exact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request

from engine.client import Client
from shared.errors import SluiceError
from shared.messages import FlowRunPage
from shared.models import Deployment, FlowRun
from shared.states import StateType

from . import _reads
from ._gantt import attempts_of

__all__ = ["RANGES", "Activity", "RunQuery", "activity", "attempt_seconds", "held_back"]

RANGES: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
RANGE_LABELS = {"": "any time", "1h": "last hour", "24h": "last 24 hours"}
RANGE_LABELS |= {"7d": "last 7 days", "30d": "last 30 days"}
CHART_LIMIT = 1000


@dataclass(frozen=True)
class RunQuery:
    """What the runs page was asked for, from its URL."""

    states: list[str] = field(default_factory=list)
    deployment: str | None = None
    tags: list[str] = field(default_factory=list)
    range: str = ""
    upcoming: bool = False
    offset: int = 0

    @classmethod
    def of(cls, request: Request) -> RunQuery:
        q = request.query_params
        try:
            offset = max(0, int(q.get("offset") or 0))
        except ValueError:
            offset = 0
        states: list[str] = []
        for value in q.getlist("state"):
            states += [s.strip() for s in value.split(",") if s.strip() and s.strip() not in states]
        span = q.get("range") or ""
        return cls(
            states=states,
            deployment=q.get("deployment") or None,
            tags=[t.strip() for t in (q.get("tag") or "").split(",") if t.strip()],
            range=span if span in RANGES else "",
            upcoming=q.get("tab") == "upcoming",
            offset=offset,
        )

    def window(self, now: datetime) -> tuple[datetime | None, datetime | None]:
        """The expected-start interval this query covers (``since`` inclusive, ``until`` not)."""
        span = RANGES.get(self.range)
        if self.upcoming:
            return now, (now + span if span else None)
        return (now - span if span else None), now

    def args(self, **changes: object) -> dict[str, object]:
        out: dict[str, object] = {
            "state": self.states,
            "deployment": self.deployment or "",
            "tag": ",".join(self.tags),
            "range": self.range,
            "tab": "upcoming" if self.upcoming else "",
            "offset": self.offset or "",
        }
        out.update(changes)
        return {k: v for k, v in out.items() if v not in ("", [], None, 0)}

    def url(self, **changes: object) -> str:
        query = urlencode(self.args(**changes), doseq=True)
        return "/runs" + (f"?{query}" if query else "")

    def matches_time(self, run: FlowRun, now: datetime) -> bool:
        since, until = self.window(now)
        at = run.expected_start_time
        return (since is None or at >= since) and (until is None or at < until)

    async def page(self, client: Client, now: datetime, limit: int) -> FlowRunPage:
        since, until = self.window(now)
        ask: dict[str, Any] = dict(states=self.states, deployment=self.deployment, tags=self.tags)
        if not self.upcoming:
            return await client.list_flow_runs(
                **ask, since=since, until=until, limit=limit, offset=self.offset, count=True
            )
        total = (
            await client.list_flow_runs(**ask, since=since, until=until, limit=1, count=True)
        ).total or 0
        start = max(0, total - self.offset - limit)
        size = max(0, min(limit, total - self.offset))
        if size == 0:
            return FlowRunPage(flow_runs=[], offset=self.offset, total=total)
        found = await client.list_flow_runs(
            **ask, since=since, until=until, limit=size, offset=start
        )
        more = self.offset + size < total
        return FlowRunPage(
            flow_runs=list(reversed(found.flow_runs)),
            offset=self.offset,
            next_offset=self.offset + size if more else None,
            total=total,
        )

    async def count_other_tab(self, client: Client, now: datetime) -> int:
        other = RunQuery(self.states, self.deployment, self.tags, self.range, not self.upcoming)
        since, until = other.window(now)
        page = await client.list_flow_runs(
            states=self.states,
            deployment=self.deployment,
            tags=self.tags,
            since=since,
            until=until,
            limit=1,
            count=True,
        )
        return page.total or 0


# --- labels and durations ----------------------------------------------------------
async def held_back(client: Client, runs: list[FlowRun], now: datetime) -> set[str]:
    """Runs that are due but waiting because every concurrency slot of their deployment is held.

    The stack's own test (``engine._stack.diagnose``): the deployment has a
    limit and that many live slot leases, none of them this run's.
    """
    due = [
        r
        for r in runs
        if r.state.type is StateType.SCHEDULED and r.expected_start_time <= now and r.deployment_id
    ]
    found: set[str] = set()
    deployments: dict[str, Deployment | None] = {}
    holders: dict[str, set[str] | None] = {}
    for run in due:
        dep_id = run.deployment_id
        assert dep_id is not None
        if dep_id not in deployments:
            try:
                deployments[dep_id] = await client.read_deployment(id=dep_id)
            except SluiceError:
                deployments[dep_id] = None
        deployment = deployments[dep_id]
        if deployment is None or not deployment.concurrency_limit:
            continue
        if dep_id not in holders:
            leases = await _reads.slots_in_use(client, deployment)
            full = len(leases) >= deployment.concurrency_limit
            holders[dep_id] = {lease.flow_run_id for lease in leases} if full else None
        held = holders[dep_id]
        if held is not None and run.id not in held:
            found.add(run.id)
    return found


async def attempt_seconds(
    client: Client, runs: list[FlowRun], now: datetime
) -> dict[str, list[float]]:
    """Each attempt's seconds, for the runs that ran more than once (from their histories)."""
    out: dict[str, list[float]] = {}
    for run in runs:
        if run.run_count > 1:
            entries = await _reads.timeline(client, run)
            out[run.id] = [a.seconds(now) for a in attempts_of(e.state for e in entries)]
    return out


# --- activity ------------------------------------------------------------------------
ORDER = [t.value for t in StateType]


@dataclass(frozen=True)
class Column:
    x: float
    start: datetime
    parts: list[tuple[str, float, float, int]]
    """(state type, y, height, count) from the bottom up."""


@dataclass(frozen=True)
class Activity:
    columns: list[Column]
    start: datetime
    end: datetime
    peak: int
    counted: int
    capped: bool
    legend: list[str]
    width: int = 600
    height: int = 80
    bar: float = 0.0


def chart(runs: list[FlowRun], start: datetime, end: datetime, *, buckets: int = 24) -> Activity:
    """Runs per time slice by state type, as stacked columns (pure)."""
    width, height = 600, 80
    step = (end - start) / buckets
    counts: list[Counter[str]] = [Counter() for _ in range(buckets)]
    for run in runs:
        at = run.expected_start_time
        if start <= at < end:
            counts[min(buckets - 1, int((at - start) / step))][run.state.type.value] += 1
    peak = max((sum(c.values()) for c in counts), default=0)
    bar = width / buckets
    columns = []
    for n, c in enumerate(counts):
        y = float(height)
        parts = []
        for kind in ORDER:
            if c[kind]:
                h = height * c[kind] / peak
                y -= h
                parts.append((kind, round(y, 2), round(h, 2), c[kind]))
        columns.append(Column(x=round(n * bar, 2), start=start + step * n, parts=parts))
    legend = [k for k in ORDER if any(c[k] for c in counts)]
    return Activity(
        columns=columns,
        start=start,
        end=end,
        peak=peak,
        counted=sum(sum(c.values()) for c in counts),
        capped=len(runs) >= CHART_LIMIT,
        legend=legend,
        width=width,
        height=height,
        bar=round(bar, 2),
    )


async def activity(client: Client, query: RunQuery, now: datetime) -> Activity:
    """The recent runs matching the filters over the chosen range.

    Without a range, the shortest of the ranges on offer that holds every
    run counted (so a young stack's runs are not one column at the edge).
    """
    span = RANGES.get(query.range) or RANGES["30d"]
    page = await client.list_flow_runs(
        states=query.states,
        deployment=query.deployment,
        tags=query.tags,
        since=now - span,
        until=now,
        limit=CHART_LIMIT,
    )
    if not query.range and page.flow_runs:
        oldest = min(r.expected_start_time for r in page.flow_runs)
        span = next((s for s in RANGES.values() if now - s <= oldest), span)
    return chart(page.flow_runs, now - span, now)
