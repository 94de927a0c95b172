"""The dispatch work item of a due run, as the orchestrator and the scheduler publish it.

Owns the subject, the payload and the ``Nats-Msg-Id`` of an offer, so both
publishers stay byte-for-byte alike: the same run and claim attempt always
carry the same message id, and JetStream stores a repeated offer once
within its duplicate window (a later repeat is harmless: the PENDING claim
decides who runs it). Publishing itself is the caller's.
"""

from __future__ import annotations

from . import names
from .codec import encode
from .messages import Dispatch
from .models import FlowRun

MSG_ID = "Nats-Msg-Id"


def dispatch_item(run: FlowRun) -> Dispatch:
    """The offer of a run that has a deployment (raises ValueError if it has none)."""
    if run.deployment_id is None:
        raise ValueError(f"flow run {run.id} has no deployment; no runner can take it")
    return Dispatch(
        flow_run_id=run.id,
        deployment_id=run.deployment_id,
        queue=run.queue,
        attempt=run.attempt,
        scheduled_time=run.expected_start_time,
    )


def dispatch_message(item: Dispatch) -> tuple[str, bytes, dict[str, str]]:
    """``(subject, payload, headers)`` to publish ``item`` on ``FLOWRUN_DISPATCH``."""
    return (
        names.dispatch_subject(item.queue, item.deployment_id or ""),
        encode(item),
        {MSG_ID: f"dispatch:{item.flow_run_id}:{item.attempt}"},
    )
