"""The ``flow_runs`` bucket's stream read as run events: the one place that decodes it.

Each write of a run is one message on ``$KV.flow_runs.<run id>`` in the
bucket's stream (``KV_flow_runs``), and that message *is* the run's event: no
second stream is written beside it. What a message means:

* a value of a run with no history that was never changed (``created ==
  updated``): :class:`FlowRunCreated`;
* any other value: :class:`FlowRunStateChanged`; ``from_state`` is the newest
  entry of the run's history, ``transition_id`` the id its state was stamped
  with;
* a delete marker (header ``KV-Operation: DEL`` or ``PURGE``):
  :class:`FlowRunDeleted`. The orchestrator's markers carry the run as it was
  in their body and the reason in the ``Sluice-Reason`` header.

``revision`` is the message's stream sequence, which is the KV revision. The
bucket keeps one message per run (its newest), so a reader that was away, or
slow enough that a run moved on before its message was delivered, sees only
the newest: :func:`transitions` derives the ones before it from the run's
history.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from .codec import decode
from .models import FlowRun
from .names import FLOW_RUNS_BUCKET, kv_stream
from .records import Event, FlowRunCreated, FlowRunDeleted, FlowRunStateChanged
from .states import State

__all__ = [
    "DELETE_OPERATIONS",
    "KV_OPERATION",
    "REASON_HEADER",
    "STREAM",
    "SUBJECTS",
    "decode_entry",
    "event_for",
    "event_of",
    "is_created",
    "marker_headers",
    "states_of",
    "subject",
    "transitions",
]

STREAM = kv_stream(FLOW_RUNS_BUCKET)
_PREFIX = f"$KV.{FLOW_RUNS_BUCKET}."
SUBJECTS = f"{_PREFIX}>"
"""Every run's writes: what a consumer of all run events subscribes to."""

KV_OPERATION = "KV-Operation"
DELETE_OPERATIONS = ("DEL", "PURGE")
REASON_HEADER = "Sluice-Reason"


def subject(run_id: str) -> str:
    """The subject of one run's writes (and of its events)."""
    return f"{_PREFIX}{run_id}"


def is_created(run: FlowRun) -> bool:
    """Is this value the run's first write?"""
    return not run.history and not run.history_dropped and run.created == run.updated


def marker_headers(reason: str | None) -> dict[str, str]:
    """The headers of the orchestrator's delete marker (besides its compare-and-set)."""
    headers = {KV_OPERATION: "DEL"}
    if reason:
        # A header value is one line: a reason typed with line breaks keeps its words.
        headers[REASON_HEADER] = " ".join(reason.split())
    return headers


def decode_entry(
    run_id: str,
    data: bytes | None,
    headers: Mapping[str, str] | None,
    revision: int,
    occurred: datetime,
) -> Event:
    """The event one message of the stream stands for; ``occurred`` is when the
    server stored it (used for deletions). Raises msgspec.DecodeError for a
    value that is not a run."""
    headers = headers or {}
    if headers.get(KV_OPERATION) in DELETE_OPERATIONS:
        return FlowRunDeleted(
            flow_run_id=run_id,
            revision=revision,
            occurred=occurred,
            flow_run=decode(data, FlowRun) if data else None,
            reason=headers.get(REASON_HEADER),
        )
    return event_for(decode(data or b"", FlowRun), revision)


def event_for(run: FlowRun, revision: int) -> FlowRunCreated | FlowRunStateChanged:
    """The event of the write that stored ``run`` at ``revision`` (a value read from
    the bucket, say)."""
    if is_created(run):
        return FlowRunCreated(flow_run=run, revision=revision, occurred=run.created)
    return FlowRunStateChanged(
        flow_run=run,
        revision=revision,
        occurred=run.updated,
        from_state=run.history[-1].state if run.history else None,
        transition_id=run.state.details.transition_id,
    )


def event_of(msg: Any) -> Event:
    """The event of a message delivered by a consumer of :data:`STREAM`."""
    meta = msg.metadata
    return decode_entry(
        msg.subject[len(_PREFIX) :], msg.data, msg.headers, meta.sequence.stream, meta.timestamp
    )


def transitions(event: Event, after: int = 0) -> list[Event]:
    """``event`` and, oldest first before it, each transition of its run
    written after revision ``after`` that the run's history still holds.

    For a reader that saw the run last at revision ``after`` (0: never) and now
    sees only ``event``. A derived event's ``flow_run`` is the run as it is now
    with that state: its other fields are not kept in the history.
    """
    if not isinstance(event, FlowRunStateChanged):
        return [event]
    run = event.flow_run
    out: list[Event] = []
    for i, past in enumerate(run.history):
        if past.revision <= after:
            continue
        then = msgspec.structs.replace(run, state=past.state, updated=past.state.timestamp)
        if i == 0 and not run.history_dropped and past.state.timestamp == run.created:
            out.append(FlowRunCreated(flow_run=then, revision=past.revision, occurred=run.created))
            continue
        out.append(
            FlowRunStateChanged(
                flow_run=then,
                revision=past.revision,
                occurred=past.state.timestamp,
                from_state=run.history[i - 1].state if i else None,
                transition_id=past.state.details.transition_id,
            )
        )
    out.append(event)
    return out


def states_of(run: FlowRun) -> list[State]:
    """The states the run went through that it still records, oldest first, ending
    with the current one."""
    return [*(past.state for past in run.history), run.state]
