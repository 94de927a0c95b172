"""Create the JetStream streams and KV buckets Sluice needs, idempotently.

Every service calls :func:`bootstrap` before it serves, so the stack comes up
in any order. An existing stream or bucket is left as it is (an operator may
have tuned it); a missing one is created with file storage and the configured
number of replicas. Two services bootstrapping at once is harmless.
"""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from . import names
from .settings import Settings

log = logging.getLogger("sluice.bootstrap")

DUPLICATE_WINDOW = 120.0  # seconds; JetStream's Nats-Msg-Id de-duplication


def stream_configs(settings: Settings) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=names.EVENTS_STREAM,
            description="One event per accepted flow-run transition",
            subjects=[f"{names.EVENTS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.events_max_age or None,
            duplicate_window=DUPLICATE_WINDOW,
            allow_direct=True,
        ),
        StreamConfig(
            name=names.LOGS_STREAM,
            description="Log records of flow runs",
            subjects=[f"{names.LOGS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.logs_max_age or None,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
        ),
        StreamConfig(
            name=names.TASKRUNS_STREAM,
            description="Task-run state records, per flow run; read to resume a retried run",
            subjects=[f"{names.TASKRUNS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.events_max_age or None,
            allow_direct=True,
        ),
        # Limits, not a work queue: a queue runner and a process serving one
        # deployment may both consume an item (ownership comes from the
        # compare-and-set claim, not from the ack), and items wait here for a
        # runner that has not started yet.
        StreamConfig(
            name=names.DISPATCH_STREAM,
            description="Flow runs that are due, offered to runners",
            subjects=[f"{names.DISPATCH_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.dispatch_max_age or None,
            duplicate_window=DUPLICATE_WINDOW,
        ),
    ]


def bucket_configs(settings: Settings) -> list[KeyValueConfig]:
    def bucket(
        name: str, description: str, *, history: int = 1, leases: bool = False
    ) -> KeyValueConfig:
        return KeyValueConfig(
            bucket=name,
            description=description,
            history=history,
            storage=StorageType.FILE,
            replicas=settings.replicas,
            direct=True,
            # Leases carry a per-entry TTL and vanish unless renewed; the limit
            # marker lets watchers see an expiry as a delete.
            limit_marker_ttl=1.0 if leases else None,
        )

    # No bucket TTL: runs, deployments and idempotency keys are kept until
    # someone deletes them.
    return [
        bucket(
            names.FLOW_RUNS_BUCKET,
            "Flow runs with their current state; written only by the orchestrator",
        ),
        bucket(names.DEPLOYMENTS_BUCKET, "Deployments by id, and name index entries", history=5),
        bucket(names.HEARTBEATS_BUCKET, "Runner heartbeats (per-entry TTL)", leases=True),
        bucket(
            names.SLOTS_BUCKET,
            "Deployment concurrency slots held by runs (per-entry TTL leases)",
            leases=True,
        ),
        bucket(names.IDEMPOTENCY_BUCKET, "Idempotency key -> flow run id; keys never expire"),
    ]


async def bootstrap(js: JetStreamContext, settings: Settings) -> None:
    """Ensure every stream, bucket and object store exists. Safe to call concurrently."""
    for config in stream_configs(settings):
        try:
            await js.stream_info(config.name or "")
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
                log.info("created stream %s", config.name)
            except nats.js.errors.BadRequestError:
                await js.stream_info(config.name or "")  # created by a peer meanwhile
    for kv_config in bucket_configs(settings):
        try:
            await js.key_value(kv_config.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                await js.create_key_value(kv_config)
                log.info("created bucket %s", kv_config.bucket)
            except nats.js.errors.BadRequestError:
                await js.key_value(kv_config.bucket)
    try:
        await js.object_store(names.RESULTS_BUCKET)
    except nats.js.errors.NotFoundError:
        await _create_results_store(js, settings)


async def _create_results_store(js: JetStreamContext, settings: Settings) -> None:
    try:
        await js.create_object_store(
            names.RESULTS_BUCKET,
            config=ObjectStoreConfig(
                description="Flow and task results referenced by state details.result_ref",
                storage=StorageType.FILE,
                replicas=settings.replicas,
            ),
        )
        log.info("created object store %s", names.RESULTS_BUCKET)
    except nats.js.errors.BadRequestError:
        await js.object_store(names.RESULTS_BUCKET)
