"""bench.scheduler's figures, and the page it writes from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._harness import fmt, markdown_table, percentile


@dataclass
class Lag:
    deployments: int
    minutes: int
    lead: float
    expected: int = 0
    pending: list[float] = field(default_factory=list)
    offered: list[float] = field(default_factory=list)
    cpu: float = 0.0
    rss: float = 0.0
    peak: float = 0.0
    window: float = 0.0
    runs_created: int = 0


@dataclass
class Idle:
    schedules: int
    window: float
    base_cpu: float = 0.0
    base_rss: float = 0.0
    register_s: float = 0.0
    startup_s: float = 0.0
    cpu: float = 0.0
    rss: float = 0.0
    peak: float = 0.0
    runs: int = 0


def ms(values: list[float], q: float) -> str:
    return fmt(percentile(values, q) * 1000) if q < 100 else fmt(values[-1] * 1000)


def document(
    lags: list[Lag], idle: Idle, machine: dict[str, str], command: str, *, slots: int, claimers: int
) -> str:
    """The page of results; ``slots`` and ``claimers``: how the benchmark played the runners."""
    first = lags[0]
    lines = ["# Scheduler benchmark", ""]
    lines += [f"- **{k}**: {v}" for k, v in machine.items()]
    lines += ["", f"Command: `{command}`", "", "## Schedule lag", ""]
    lines.append(
        f"{first.deployments:,} deployments, each a `* * * * *` cron; {first.minutes} measured "
        f"minute(s) per row; the benchmark process acts as the runners ({slots:,} slots, "
        f"{claimers} claims in flight at most): it holds an early offer, claims at the due "
        "time, and completes the run 10 s later; "
        "scheduler horizon 120 s (each minute, in one pass 7.5 s before the minute, it "
        "creates the runs due two minutes later). Offer lag is negative when the item was "
        "stored before the due time."
    )
    lines.append("")
    rows = []
    for lag in lags:
        pend, offer = sorted(lag.pending), sorted(lag.offered)
        rows.append(
            [
                f"{lag.lead:g} s",
                f"{len(pend):,} / {lag.expected:,}",
                ms(pend, 50),
                ms(pend, 99),
                ms(pend, 100) if pend else "n/a",
                ms(offer, 50),
                ms(offer, 99),
                f"{lag.cpu:.1f} s / {lag.window:.0f} s",
                f"{lag.rss:.0f}",
            ]
        )
    headers = [
        "dispatch lead",
        "runs claimed",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
        "offer p50 ms",
        "offer p99 ms",
        "scheduler CPU",
        "RSS MiB",
    ]
    lines.append(markdown_table(headers, rows))
    lines += [
        "",
        "Lag: due time to the Pending state's timestamp. Offer: due time to the dispatch "
        "item stored by JetStream. Scheduler CPU: from a minute before the measured "
        "minutes to their end.",
        "",
        "## Idle footprint",
        "",
    ]
    rows = [
        ["no schedules (baseline)", "0", "-", f"{idle.base_rss:.0f}", "-", "-"],
        [
            f"{idle.schedules:,} schedules",
            f"{idle.runs:,}",
            f"{idle.startup_s:.0f}",
            f"{idle.rss:.0f}",
            f"{idle.peak:.0f}",
            f"{idle.cpu:.2f} s / {idle.window:.0f} s ({idle.cpu / idle.window:.1%})",
        ],
    ]
    lines.append(
        markdown_table(
            ["scheduler", "runs created", "start-up s", "RSS MiB", "peak MiB", "CPU at idle"],
            rows,
        )
    )
    lines += [
        "",
        f"Baseline CPU at idle: {idle.base_cpu:.2f} s. Registering the {idle.schedules:,} "
        f"deployments took {idle.register_s:.0f} s (orchestrator). Start-up: from launching "
        "the scheduler until its runs were all created (the event stream quiet for 5 s).",
        "",
    ]
    return "\n".join(lines)
