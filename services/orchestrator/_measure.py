"""The orchestrator's metrics of accepted transitions (see docs/telemetry.md)."""

from __future__ import annotations

from datetime import datetime

from shared import telemetry
from shared.models import FlowRun


def measure(before: FlowRun, after: FlowRun, now: datetime) -> None:
    """Metrics of one accepted transition (nothing when metrics are off)."""
    if not telemetry.metrics_enabled():
        return
    telemetry.record_transition(after.state.type.value)
    if after.run_count == 1 and before.run_count == 0:  # entered Running the first time
        telemetry.record_run_started(
            (now - after.created).total_seconds(),
            (now - after.expected_start_time).total_seconds(),
            after.queue,
        )
