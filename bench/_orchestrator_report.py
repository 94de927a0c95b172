"""The orchestrator benchmark's shapes and its report (``python -m bench.orchestrator``).

What a run is made of (:class:`Counts`), what it measured (:class:`Row`,
:class:`Report`), and the markdown written to bench/results/orchestrator.md,
judged against issue 23's goal. The scenarios themselves are in
bench/orchestrator.py.
"""

from __future__ import annotations

import pstats
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._harness import Measurement, fmt, markdown_table

GOAL_RATIO = 0.4


@dataclass(frozen=True)
class Counts:
    kv: int
    """Raw KV puts per trial of the stand-alone reference rows."""
    paired_kv: int
    """Raw KV puts per reference trial run alternately with another scenario's trials."""
    floor: int
    create: int
    idempotent: int
    transition_runs: int
    """Runs taken through PENDING, RUNNING, COMPLETED: three timed transitions each."""
    warmup: int
    repeat: int
    """Timed trials per scenario and level; the median trial is reported."""

    @classmethod
    def for_run(cls, quick: bool, repeat: int | None) -> Counts:
        if quick:
            return cls(
                kv=200,
                paired_kv=100,
                floor=100,
                create=200,
                idempotent=100,
                transition_runs=50,
                warmup=20,
                repeat=repeat or 1,
            )
        return cls(
            kv=3000,
            paired_kv=1000,
            floor=2000,
            create=3000,
            idempotent=2000,
            transition_runs=1000,
            warmup=200,
            repeat=repeat or 3,
        )


@dataclass
class Row:
    scenario: str
    concurrency: int
    m: Measurement
    kind: str  # "kv" (a reference row), "floor", "create", "transition"
    ref: Measurement | None = None
    """Raw KV put trials run alternately with this row's trials (None for a kv row)."""
    cpu_ms: float | None = None
    """The orchestrator's CPU milliseconds per operation (None: not measured)."""

    @property
    def ref_rate(self) -> float:
        return (self.ref or self.m).ops_per_s

    @property
    def ratio(self) -> float:
        return self.m.ops_per_s / self.ref_rate


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        vs = f" ({row.ratio:.2f} x raw KV put)" if row.ref is not None else ""
        cpu = f", {row.cpu_ms:.2f} CPU ms/op" if row.cpu_ms is not None else ""
        print(
            f"  {row.scenario} c={row.concurrency}: {row.m.ops_per_s:,.0f}/s{vs}{cpu}",
            file=sys.stderr,
        )


# --- report ------------------------------------------------------------------------------
HEADERS = [
    "scenario",
    "conc.",
    "ops",
    "ops/s",
    "min..max ops/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "raw KV put ops/s",
    "ratio",
    "orch. CPU ms/op",
]


def table(report: Report) -> str:
    rows = [
        [
            r.scenario,
            str(r.concurrency),
            f"{len(r.m.latencies):,}",
            fmt(r.m.ops_per_s, 0),
            r.m.spread or "-",
            fmt(r.m.p50_ms, 2),
            fmt(r.m.p99_ms, 2),
            fmt(r.m.max_ms, 1),
            fmt(r.ref_rate, 0),
            fmt(r.ratio, 2),
            fmt(r.cpu_ms, 2) if r.cpu_ms is not None else "-",
        ]
        for r in report.rows
    ]
    return markdown_table(HEADERS, rows)


def verdicts(report: Report) -> list[str]:
    out = []
    for r in report.rows:
        if r.kind == "create" and "idempotency" not in r.scenario:
            met = "met" if r.ratio >= GOAL_RATIO else "NOT met"
            out.append(
                f"- {r.scenario}, concurrency {r.concurrency}: {r.ratio:.2f} x raw KV put "
                f"(goal ≥ {GOAL_RATIO}): **{met}**"
            )
    return out


def document(report: Report, machine: dict[str, str], command: str, notes: list[str]) -> str:
    lines = ["# Orchestrator benchmark", ""]
    lines += [f"- **{k}**: {v}" for k, v in machine.items()]
    lines += ["", f"Command: `{command}`", "", table(report), "", "Goal:", *verdicts(report)]
    lines += ["", "Notes:", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)


def notes_for(counts: Counts, levels: Sequence[int], modes: Sequence[str]) -> list[str]:
    return [
        f"orchestrator mode: {', '.join(modes)} "
        "(subprocess = `python -m services.orchestrator`, its own process and event loop; "
        "in-process = served from the load generator's event loop)",
        f"concurrency = asyncio tasks sharing one NATS connection; levels {list(levels)}",
        f"counts per timed trial: raw KV put {counts.kv} (stand-alone rows) and "
        f"{counts.paired_kv} (paired reference trials), wire floor {counts.floor}, "
        f"create {counts.create}, create with idempotency key {counts.idempotent}, "
        f"transitions {counts.transition_runs} runs x 3; {counts.repeat} trial(s) per "
        f"scenario and level (ops = all trials); warm-up {counts.warmup} ops per scenario "
        "and level, untimed",
        "raw KV put ops/s and ratio: every non-reference row is paired with raw KV put "
        "trials at the same concurrency, run alternately with its own trials (put, "
        "scenario, put, scenario, ...), so background load drifts hit both; the "
        "stand-alone raw KV put rows are run once at the start",
        "raw KV put: fresh file bucket (history 1, direct get), fresh uuid key per put; "
        "the value is an encoded flow run as the orchestrator stores it",
        "wire floor: per op 1 KV create (the run's event), then the dispatch item (a "
        "JetStream publish with Nats-Msg-Id, its ack not waited for) — what a create "
        "sends, without the service (its deployment comes from a cache)",
        "orch. CPU ms/op: the orchestrator subprocess's CPU time (/proc) over a scenario's "
        "warm-up and trials, its paired raw KV put trials included, divided by the "
        "scenario's operations; a transition op is one lifecycle of three proposals",
        "creates and proposals use engine.client.Client (msgspec encode/decode on the client "
        "side); every reply is checked (errors raise, transitions must be ACCEPT)",
        "ops/s = the median trial's timed ops ÷ its wall time; latency percentiles are "
        "nearest-rank over all trials pooled",
        "nats-server runs with `sync_interval: always` (every acknowledged write is fsynced)",
    ]


def print_profile(path: Path, top: int = 30) -> None:
    if not path.exists():
        print(f"(no profile written to {path})", file=sys.stderr)
        return
    stats = pstats.Stats(str(path), stream=sys.stderr)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
