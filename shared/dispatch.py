"""The dispatch work item of a due run, as the orchestrator and the scheduler publish it.

Owns the subject, the payload and the ``Nats-Msg-Id`` of an offer, so both
publishers stay byte-for-byte alike: the same run and claim attempt always
carry the same message id, and JetStream stores a repeated offer once
within its duplicate window (a later repeat is harmless: the PENDING claim
decides who runs it). Publishing itself is the caller's.
"""

from __future__ import annotations

import hashlib

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from . import names
from .codec import encode
from .messages import Dispatch
from .models import FlowRun

MSG_ID = "Nats-Msg-Id"

#: Seconds an item a runner fetched stays with it without an ack or an
#: ``in_progress``: how soon the item of a runner that stopped or died goes to
#: another. Short, because a runner claiming an item says ``in_progress``
#: every :data:`PROGRESS_SECONDS` until it has acked it.
ACK_WAIT = 2.0
PROGRESS_SECONDS = 0.5


def consumer_config(filters: list[str]) -> ConsumerConfig:
    """The durable consumer that every runner pulling ``filters`` shares.

    The orchestrator creates it (``runner.consumer``); runners may only pull
    from it, so none can change what all of them depend on. Its name derives
    from the filters, so asking twice gives the same consumer.
    """
    ordered = sorted(set(filters))
    durable = "runner-" + hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:20]
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        deliver_policy=DeliverPolicy.ALL,
        max_ack_pending=-1,
        inactive_threshold=7 * 24 * 3600.0,
        **({"filter_subject": ordered[0]} if len(ordered) == 1 else {"filter_subjects": ordered}),
    )


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


def run_trace(run: FlowRun) -> dict[str, str]:
    """The creator's trace context stored with ``run``, as message headers ({} if none)."""
    out: dict[str, str] = {}
    if run.traceparent:
        out["traceparent"] = run.traceparent
        if run.tracestate:
            out["tracestate"] = run.tracestate
    return out


def dispatch_message(item: Dispatch) -> tuple[str, bytes, dict[str, str]]:
    """``(subject, payload, headers)`` to publish ``item`` on ``FLOWRUN_DISPATCH``."""
    return (
        names.dispatch_subject(item.queue, item.deployment_id or ""),
        encode(item),
        {MSG_ID: f"dispatch:{item.flow_run_id}:{item.attempt}"},
    )
