"""Samples of the Sluice/Prefect comparison, their statistics, and bench/RESULTS.md.

A :class:`Figure` is one measured quantity (``import time``, ``create ->
Completed`` ...) with the samples of each side. The report gives, per figure
and side, the median, the p95 (nearest rank), min..max, and the ratio of each
Sluice side's median to Prefect's, with whether that is ahead (for a figure
where less is better, a ratio below 1).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _prefect_venv
from ._harness import REPO, ForeignLoad, fmt, machine_info, markdown_table, percentile

PREFECT = "Prefect"
SLUICE = "Sluice"
SLUICE_FRESH = "Sluice (fresh process)"
SLUICE_FORK = "Sluice (fork server)"


@dataclass
class Figure:
    scenario: str
    label: str
    unit: str
    lower_is_better: bool = True
    compared: bool = True
    """False for context (a process count): shown, but not scored against Prefect."""
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, side: str, *values: float) -> None:
        self.samples.setdefault(side, []).extend(values)

    def median(self, side: str) -> float:
        values = self.samples.get(side)
        return statistics.median(values) if values else math.nan

    def ratio(self, side: str) -> float:
        """This side's median over Prefect's."""
        ours, theirs = self.median(side), self.median(PREFECT)
        if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
            return math.nan
        return ours / theirs

    def ahead(self, side: str) -> str:
        ratio = self.ratio(side)
        if math.isnan(ratio) or not self.compared:
            return ""
        return "yes" if (ratio < 1) == self.lower_is_better and ratio != 1 else "**no**"


class Figures:
    """Figures in the order they were first measured."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Figure] = {}

    def get(
        self,
        scenario: str,
        label: str,
        unit: str,
        *,
        lower_is_better: bool = True,
        compared: bool = True,
    ) -> Figure:
        key = (scenario, label)
        if key not in self._by_key:
            self._by_key[key] = Figure(scenario, label, unit, lower_is_better, compared)
        return self._by_key[key]

    def __iter__(self) -> Iterator[Figure]:
        return iter(self._by_key.values())

    def as_json(self) -> list[dict[str, object]]:
        return [
            {
                "scenario": f.scenario,
                "figure": f.label,
                "unit": f.unit,
                "lower_is_better": f.lower_is_better,
                "samples": f.samples,
            }
            for f in self
        ]


def _value(unit: str, value: float) -> str:
    """Three significant figures (at most four decimals), thousands separated."""
    if math.isnan(value) or value == 0 or unit == "count":
        return fmt(value, 0)
    return fmt(value, min(4, max(0, 2 - math.floor(math.log10(abs(value))))))


def tables(figures: Figures) -> list[str]:
    """One markdown table per scenario, sides in a fixed order."""
    order = [SLUICE, SLUICE_FRESH, SLUICE_FORK, PREFECT]
    scenarios: dict[str, list[Figure]] = {}
    for figure in figures:
        scenarios.setdefault(figure.scenario, []).append(figure)
    out: list[str] = []
    for scenario, members in scenarios.items():
        rows = []
        for figure in members:
            for side in (s for s in order if s in figure.samples):
                values = sorted(figure.samples[side])
                ratio = figure.ratio(side) if side != PREFECT else math.nan
                rows.append(
                    [
                        f"{figure.label} ({figure.unit})",
                        side,
                        str(len(values)),
                        _value(figure.unit, statistics.median(values)),
                        _value(figure.unit, percentile(values, 95)),
                        f"{_value(figure.unit, values[0])}..{_value(figure.unit, values[-1])}",
                        "" if side == PREFECT or not figure.compared else fmt(ratio, 3),
                        "" if side == PREFECT else figure.ahead(side),
                    ]
                )
        out.append(f"### {scenario}\n")
        out.append(
            markdown_table(
                ["figure", "side", "n", "median", "p95", "min..max", "÷ Prefect", "ahead"], rows
            )
        )
        out.append("")
    return out


def scorecard(figures: Figures) -> list[str]:
    """Every figure where a Sluice side is not ahead of Prefect, or a line saying none is."""
    behind = [
        f"- {f.scenario}: {f.label} — {side} at {fmt(f.ratio(side), 3)} x Prefect"
        for f in figures
        for side in f.samples
        if side != PREFECT and f.ahead(side) == "**no**"
    ]
    if not any(PREFECT in f.samples for f in figures):
        return [*behind, "Prefect's side was not run: nothing to compare."]
    missing = [
        f"- {f.scenario}: {f.label} — no {PREFECT if PREFECT not in f.samples else SLUICE} samples"
        for f in figures
        if f.compared and (PREFECT not in f.samples or len(f.samples) < 2)
    ]
    if not behind and not missing:
        return ["Sluice is ahead of Prefect on every figure measured."]
    return [*behind, *missing]


def _commands(plan: Any, prefect_version: str | None) -> list[str]:
    """The processes each side starts, as run (temporary paths and ports shown as names)."""
    from ._stacks import PrefectStack, SluiceStack

    sluice = SluiceStack(Path("TMP"), fork=False)
    lines = [
        "Sluice (`.venv/bin/python`, cwd = the repository):",
        "",
        "- import: `python bench/_import_probe.py 'from engine import flow, task'`",
        f"- tasks: `python -m bench._sluice_tasks {plan.tasks} 1` (with `SLUICE_NATS_URL` set"
        " when reporting to the stack)",
        "- stack, fresh process per run: `SLUICE_EXAMPLES=bench/_deployments.py python -m"
        " bench._dev_stack` (= `python -m services.dev`, what `sluice dev` runs)",
        "- stack, fork server: the same with `--fork`",
        "- runs are created, awaited and cancelled with `engine.client.Client`"
        " (`bench/runner.py`, `bench/cancel.py`)",
        "",
    ]
    if prefect_version:
        prefect = PrefectStack.__new__(PrefectStack)
        prefect.port = 0
        server = " ".join(prefect.server_argv[1:]).replace(" 0", " PORT")
        lines += [
            f"Prefect {prefect_version} (`bench/.prefect-venv/bin/python`):",
            "",
            "- import: `python bench/_import_probe.py 'from prefect import flow, task'`",
            f"- tasks: `python bench/prefect_side/tasks.py {plan.tasks} 1` (with"
            " `PREFECT_API_URL` set when reporting to the server; without it, Prefect's"
            " ephemeral local API)",
            f"- stack: `prefect {server}`, then, once `/api/health` answers,"
            " `python bench/prefect_side/served.py` (`serve(noop, sleeper, limit=8)`)",
            "- runs are created (`POST /deployments/{id}/create_flow_run`), read"
            " (`GET /flow_runs/{id}`, every 20 ms) and cancelled (`POST /flow_runs/{id}/set_state`"
            " CANCELLING, as `prefect flow-run cancel` does) over Prefect's REST API",
            "",
        ]
    del sluice
    return lines


PREFECT_SETTINGS = [
    "Prefect's fastest fair settings, the same in every Prefect process:",
    "",
    "- `PREFECT_RUNNER_POLL_FREQUENCY=1`: the runner asks for work every second, the smallest"
    " value of that integer setting (default 10; 0 makes the runner poll in a busy loop); it"
    " is also the runner's polling interval for cancellations, beside its websocket;",
    "- `PREFECT_LOGGING_LEVEL=WARNING` (Sluice: `SLUICE_LOG_LEVEL=WARNING`), so neither side"
    " spends time printing or shipping INFO logs;",
    "- `PREFECT_UI_ENABLED=false`, `PREFECT_SERVER_ANALYTICS_ENABLED=false`;",
    "- a private `PREFECT_HOME` and SQLite database in a temporary folder, as Sluice's"
    " JetStream data is.",
    "",
    "Sluice runs with its defaults: nats-server with `sync_interval: always` (every"
    " acknowledged write is fsynced), runner limit 8 (`sluice dev`'s), and its web UI on,"
    " as `sluice dev` starts it (Prefect's UI is off).",
]


def write_report(
    comparison: Any,
    *,
    command: str,
    prefect_version: str | None,
    load: ForeignLoad,
    elapsed: float,
    output: Path | None,
) -> str:
    """The markdown report; written to ``output`` (and its samples beside it as JSON)."""
    info = machine_info(output.parent if output else REPO)
    if prefect_version:
        info["prefect"] = ", ".join(f"{k} {v}" for k, v in _prefect_venv.details().items())
    info["other load on the host"] = load.summary()
    share = load.share()
    loaded = share is not None and share > 0.25
    plan = comparison.plan
    lines = [
        "# Sluice beside Prefect 3",
        "",
        *(f"- **{k}**: {v}" for k, v in info.items()),
        "",
    ]
    if loaded:
        lines += [
            f"**The machine was loaded during this run** (other processes used {share:.0%} of"
            f" one of its {os.cpu_count()} CPUs on average): both sides are slowed, and the"
            " numbers are noisy. Ratios are fairer than absolute figures, since the sides"
            " alternated.",
            "",
        ]
    lines += [
        f"Command: `{command}` (wall {elapsed / 60:.1f} min)",
        "",
        f"Plan: import {plan.import_rounds} rounds (after one untimed); tasks"
        f" {plan.task_rounds} rounds of one {plan.tasks:,}-task flow per side; stack"
        f" {plan.stack_rounds} rounds per side, each with {plan.singles} single runs and"
        f" {plan.cancels} cancels, and a batch of {plan.batch} runs in the first"
        f" {plan.batch_rounds} round(s). Sides alternate in every round; who goes first"
        " rotates. p95 is nearest-rank, so with few samples it is the maximum.",
        "",
        "## Result",
        "",
        *scorecard(comparison.figures),
        "",
        "`÷ Prefect` is the Sluice median over Prefect's; `ahead` says whether Sluice is"
        " better (smaller, or larger for runs/s). Single runs and batches are timed with"
        " each server's own timestamps of the run (created, start_time, end_time).",
        "",
        *tables(comparison.figures),
    ]
    if comparison.errors:
        lines += ["## Steps that failed", "", *(f"- {e}" for e in comparison.errors), ""]
    lines += [
        "## How it ran",
        "",
        *_commands(plan, prefect_version),
        *PREFECT_SETTINGS,
        "",
        "Memory: RSS and PSS summed over the process trees of the stack (Sluice: the"
        " `bench._dev_stack` process, its nats-server and runner children; Prefect: the"
        " server and the served runner), read from /proc 3 s after the first run ended.",
    ]
    text = "\n".join(lines) + "\n"
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        output.with_suffix(".json").write_text(
            json.dumps({"command": command, "figures": comparison.figures.as_json()}, indent=1)
            + "\n"
        )
    return text
