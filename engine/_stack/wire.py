"""What both reporters send, built one way: parameters, proposed states, log records."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import msgspec

from engine.states import format_traceback
from shared.messages import LogRecord, ProposedState
from shared.states import State

__all__ = ["MAX_PARAMETER_BYTES", "log_record", "proposed", "wire_parameters"]

#: Largest encoded parameter value sent with a created run; bigger ones are summarised.
MAX_PARAMETER_BYTES = 16 * 1024

_encoder = msgspec.json.Encoder()
_formatter = logging.Formatter()


def wire_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as the stack can store them: JSON values, big or odd ones summarised."""
    out: dict[str, Any] = {}
    for name, value in parameters.items():
        try:
            encoded = _encoder.encode(value)
        except (TypeError, ValueError, OverflowError):
            out[name] = f"<{type(value).__name__}: not JSON>"
            continue
        if len(encoded) > MAX_PARAMETER_BYTES:
            out[name] = f"<{type(value).__name__}: {len(encoded)} bytes, not stored>"
        else:
            out[name] = msgspec.json.decode(encoded)
    return out


def proposed(state: State) -> ProposedState:
    return ProposedState(
        type=state.type,
        name=state.name,
        message=state.message,
        details=state.details,
        data=state.data,
    )


def log_record(record: logging.LogRecord) -> LogRecord | None:
    """A run's log line from a Python log record; None when it names no flow run."""
    flow_run_id = getattr(record, "flow_run_id", None)
    if not flow_run_id:
        return None
    message = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        # As a failed state keeps it: without the engine's frames that called
        # the body, so the log's traceback and the state's are the same text.
        message = f"{message}\n{format_traceback(record.exc_info[1]).rstrip()}"
    elif record.exc_info:
        message = f"{message}\n{_formatter.formatException(record.exc_info)}"
    return LogRecord(
        flow_run_id=flow_run_id,
        task_run_id=getattr(record, "task_run_id", None),
        task_run_name=getattr(record, "task_run_name", None),
        timestamp=datetime.fromtimestamp(record.created, UTC),
        level=record.levelno,
        message=message,
        logger=record.name,
    )
