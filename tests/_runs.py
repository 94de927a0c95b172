"""Flow runs made by hand, as the orchestrator would store them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from shared.models import FlowRun
from shared.states import State, StateDetails, StateType


def scheduled_run(flow_name: str = "f", *, at: datetime | None = None, **fields: Any) -> FlowRun:
    """A new run, made and Scheduled ``at`` (default: now); ``fields`` replace any of its fields."""
    now = at or datetime.now(UTC)
    run = FlowRun(
        id=str(uuid.uuid4()),
        name="r",
        flow_name=flow_name,
        state=State(
            type=StateType.SCHEDULED,
            name="Scheduled",
            timestamp=now,
            details=StateDetails(scheduled_time=now),
        ),
        created=now,
        updated=now,
        expected_start_time=now,
    )
    return msgspec.structs.replace(run, **fields)
