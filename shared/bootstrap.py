"""Create the JetStream streams and KV buckets Sluice needs, idempotently.

Every service calls :func:`bootstrap` before it serves, so the stack comes up
in any order: a service allowed to create them does, the others wait. An
existing stream or bucket is left as it is (an operator may have tuned it); a
missing one is created with file storage and the configured number of
replicas. Two services bootstrapping at once is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import NamedTuple

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PersistMode,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from . import names
from .settings import Settings

log = logging.getLogger("sluice.bootstrap")

DUPLICATE_WINDOW = 120.0  # seconds; JetStream's Nats-Msg-Id de-duplication
#: The JetStream API level of nats-server 2.14, the first that both flushes a
#: stream asynchronously on request (2.12) and, after a crash lost the newest
#: messages of one, moves its consumers back to what it holds (2.14): without
#: that, a consumer ahead of its stream would skip the items stored next.
ASYNC_FLUSH_API_LEVEL = 4


def dispatch_persist_mode(settings: Settings, api_level: int) -> PersistMode | None:
    """How the dispatch stream is written: flushed in the background where
    the server allows it, so a create makes one fsync (the run's), not two.

    A dispatch item is derived from the run, never its only record: one lost
    with a crashed server (its last milliseconds) is offered again when the
    orchestrator reconnects (``services.orchestrator._recovery``) and when the
    run is marked Late. One replica only: JetStream refuses it on more.
    """
    if settings.replicas == 1 and api_level >= ASYNC_FLUSH_API_LEVEL:
        return PersistMode.ASYNC
    return None


def stream_configs(settings: Settings, *, api_level: int = 0) -> list[StreamConfig]:
    """The streams to create; ``api_level``: the server's JetStream API level."""
    # No run event stream: a run's events are the writes of the flow_runs
    # bucket (shared.runlog). A deployment made before keeps its FLOWRUN_EVENTS
    # stream, unused; an operator may delete it.
    return [
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
            persist_mode=dispatch_persist_mode(settings, api_level),
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


class _Item(NamedTuple):
    kind: str
    name: str
    exists: Callable[[], Awaitable[bool]]
    create: Callable[[], Awaitable[object]]


def _items(js: JetStreamContext, settings: Settings) -> list[_Item]:
    async def stream_exists(name: str) -> bool:
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def bucket_exists(name: str) -> bool:
        try:
            await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            return False
        return True

    async def store_exists(name: str) -> bool:
        try:
            await js.object_store(name)
        except nats.js.errors.NotFoundError:
            return False
        return True

    store_config = ObjectStoreConfig(
        description="Flow and task results referenced by state details.result_ref",
        storage=StorageType.FILE,
        replicas=settings.replicas,
    )
    bundles_config = ObjectStoreConfig(
        description="Deployment bundles: project folders as tar.gz, named by digest",
        storage=StorageType.FILE,
        replicas=settings.replicas,
    )

    async def create_stream(name: str) -> None:
        # Asked only to create: a service that may not is not made to wait for the answer.
        info = await js.account_info()
        level = info.api.level or 0
        config = next(c for c in stream_configs(settings, api_level=level) if c.name == name)
        await js.add_stream(config)

    return [
        *(
            _Item(
                "stream",
                c.name or "",
                partial(stream_exists, c.name or ""),
                partial(create_stream, c.name or ""),
            )
            for c in stream_configs(settings)
        ),
        *(
            _Item(
                "bucket",
                c.bucket,
                partial(bucket_exists, c.bucket),
                partial(js.create_key_value, c),
            )
            for c in bucket_configs(settings)
        ),
        _Item(
            "object store",
            names.RESULTS_BUCKET,
            partial(store_exists, names.RESULTS_BUCKET),
            partial(js.create_object_store, names.RESULTS_BUCKET, config=store_config),
        ),
        _Item(
            "object store",
            names.BUNDLES_BUCKET,
            partial(store_exists, names.BUNDLES_BUCKET),
            partial(js.create_object_store, names.BUNDLES_BUCKET, config=bundles_config),
        ),
    ]


async def bootstrap(js: JetStreamContext, settings: Settings, *, poll: float = 0.5) -> None:
    """Ensure every stream, bucket and object store exists. Safe to call concurrently.

    A process whose NATS user may not create streams (in deploy/nats/auth.conf
    only the orchestrator may) finds what exists and waits for the rest: the
    server refuses its first create request, which nats-py only sees as a
    time-out, and from then on it looks again every ``poll`` seconds until
    the orchestrator has created it. Raises the JetStream error when a create
    is answered with an error and the thing still does not exist (a bad
    configuration, e.g. more replicas than servers). Cancellation stops the
    waiting.
    """
    may_create = True
    for item in _items(js, settings):
        while not await item.exists():
            if not may_create:
                await anyio.sleep(poll)
                continue
            try:
                await item.create()
                log.info("created %s %s", item.kind, item.name)
            except nats.js.errors.BadRequestError:
                if not await item.exists():  # else created by a peer meanwhile
                    raise
            except (nats.errors.TimeoutError, TimeoutError):
                may_create = False
                log.warning(
                    "cannot create %s %s (no reply: this NATS user may lack the right); "
                    "waiting for the orchestrator to create it",
                    item.kind,
                    item.name,
                )


async def leader_kv(js: JetStreamContext, bucket: str) -> KeyValue:
    """``bucket`` read through its stream's leader, so a writer sees its own writes.

    Buckets allow direct gets (any replica answers, which spreads readers'
    load), but on a cluster a replica may answer before it has applied the
    newest write: the orchestrator, which writes and then reads again (a
    deployment just registered, a run it just moved), would read the past.
    Its reads go to the leader instead. Raises BucketNotFoundError.
    """
    await js.key_value(bucket)  # checks that the bucket exists, as nats-py does
    return KeyValue(
        name=bucket, stream=names.kv_stream(bucket), pre=f"$KV.{bucket}.", js=js, direct=False
    )
