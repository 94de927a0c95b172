"""Typed access to the KV buckets the orchestrator writes.

Owns key layout and compare-and-set. The orchestrator is the only writer of
``flow_runs``; everything here turns nats-py's KV exceptions into
:class:`Exists`, :class:`Stale` or ``None`` so handlers never see them.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

import anyio
import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from shared import runlog
from shared.codec import decode, encode
from shared.errors import StackUnavailable
from shared.models import Deployment, FlowRun
from shared.names import DEPLOYMENTS_BUCKET, kv_stream
from shared.states import TERMINAL_TYPES


class Exists(Exception):
    """A create found the key already present."""


class Stale(Exception):
    """A compare-and-set lost: the key changed since it was read."""


class InFlight(Stale):
    """A compare-and-set refused because another write of the key is in flight.

    Only a replicated stream says this (error 10164, "wrong last sequence" with
    no number): its leader will not judge an expected sequence while a write of
    the same key is still being replicated. Whether the key holds a value is
    not known yet: often the write in flight is this request's own earlier try,
    whose answer was lost to an election. A create must wait for it, never take
    it for "exists" (that made a keyed create store a second run).
    """


#: How long a write waits out another write of its key in flight before the
#: request is answered "unavailable" (the caller tries again).
IN_FLIGHT_WAIT = 5.0


#: Lost compare-and-sets retried at once before :func:`after_stale` pauses.
STALE_AT_ONCE = 2
STALE_FIRST_PAUSE = 0.01
STALE_MOST_PAUSE = 0.25


async def after_stale(lost: int) -> None:
    """Pause before trying a compare-and-set again after ``lost`` tries lost.

    One lost try is a race, tried again at once. Lost again and again, it is
    usually the stream saying "not now": on a cluster, a stream's leader
    refuses a write that expects a key's sequence while another write of that
    key is in flight, or until it has applied its log after an election
    (nats-server answers "wrong last sequence", without a number). Tried in a
    tight loop, every try is spent within milliseconds and the caller gets a
    Conflict for a write that would have landed a moment later.
    """
    if lost >= STALE_AT_ONCE:
        await anyio.sleep(min(STALE_FIRST_PAUSE * 2 ** (lost - STALE_AT_ONCE), STALE_MOST_PAUSE))


class _Waited:
    """Pauses between tries of a write refused while another write of its key
    is in flight; past :data:`IN_FLIGHT_WAIT`, gives up with StackUnavailable."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._tries = 0
        self._until = time.monotonic() + IN_FLIGHT_WAIT

    async def pause(self) -> None:
        self._tries += 1
        if time.monotonic() >= self._until:
            raise StackUnavailable(
                f"another write of {self._what} is still in flight after {IN_FLIGHT_WAIT:g}s "
                "(a replicated stream electing a leader?); try again"
            )
        await after_stale(self._tries + STALE_AT_ONCE - 1)


def _digest(text: str) -> str:
    # KV keys allow a narrow alphabet; user-chosen strings are hashed.
    return hashlib.sha256(text.encode()).hexdigest()[:40]


#: JetStream's error codes for a failed expected-last-sequence check: the key
#: is at another sequence, and (replicated streams) a write of it is in flight.
WRONG_LAST_SEQUENCE = 10071
IN_FLIGHT = 10164
#: Either: the key was written, or is being written, by someone else meanwhile.
LOST = (WRONG_LAST_SEQUENCE, IN_FLIGHT)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct):
    """JetStream's answer to a publish: the stored sequence, or why not."""

    seq: int = 0
    error: _ApiError | None = None


_ACK = msgspec.json.Decoder(_Ack)


class RunStore:
    def __init__(
        self,
        kv: KeyValue,
        nc: NATS,
        *,
        timeout: float = 5.0,
        on_write: Callable[[str, int, FlowRun | None], None] | None = None,
    ) -> None:
        """``kv``: the bucket, for reads; writes are requests on ``nc``, each
        given ``timeout`` seconds (nats-py's JetStream default). ``on_write`` is
        told of each stored write: the run's id, its revision, and the run (None
        for a delete marker); the read model keeps its index from it."""
        self._kv = kv
        self._nc = nc
        self._timeout = timeout
        self._on_write = on_write

    async def get(self, run_id: str) -> tuple[FlowRun, int] | None:
        try:
            entry = await self._kv.get(run_id, validate_keys=False)
        except nats.js.errors.NotFoundError:
            return None
        if entry.value is None:
            return None
        return decode(entry.value, FlowRun), entry.revision or 0

    async def create(self, run: FlowRun, *, over_deleted: bool = True) -> int:
        """Store a new run; raises Exists if its id holds a run (or, unless
        ``over_deleted``, ever held one: a delete marker counts)."""
        waited: _Waited | None = None  # made only when needed: this is every create's path
        while True:
            try:
                return await self._write(run, 0)
            except InFlight:
                waited = waited or _Waited(f"flow run {run.id}")
                await waited.pause()
            except Stale:
                break
        if not over_deleted:
            raise Exists(run.id)
        try:  # nats-py's create writes over a delete marker
            revision = await self._kv.create(run.id, encode(run), validate_keys=False)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Exists(run.id) from None
        self._wrote(run.id, revision, run)
        return revision

    def _wrote(self, run_id: str, revision: int, run: FlowRun | None) -> None:
        if self._on_write is not None:
            self._on_write(run_id, revision, run)

    async def update(self, run: FlowRun, last_revision: int) -> int:
        """Store ``run`` if it is still at ``last_revision``; raises Stale if not."""
        return await self._write(run, last_revision)

    async def _write(self, run: FlowRun, last: int, marker: dict[str, str] | None = None) -> int:
        """A compare-and-set put of the run's key, as nats-py's KV does it, with
        its acknowledgement decoded by msgspec: this is on every write's path.
        ``marker``: the headers of a delete marker, which this write then is."""
        try:
            msg = await self._nc.request(
                runlog.subject(run.id),
                encode(run),
                timeout=self._timeout,
                headers={**(marker or {}), "Nats-Expected-Last-Subject-Sequence": str(last)},
            )
        except nats.errors.NoRespondersError:
            raise nats.js.errors.NoStreamResponseError from None
        ack = _ACK.decode(msg.data)
        if ack.error is not None:
            if ack.error.err_code == WRONG_LAST_SEQUENCE:
                raise Stale(run.id)
            if ack.error.err_code == IN_FLIGHT:
                raise InFlight(run.id)
            raise nats.js.errors.APIError.from_error(msgspec.structs.asdict(ack.error))
        self._wrote(run.id, ack.seq, None if marker is not None else run)
        return ack.seq

    async def delete(self, run: FlowRun, last_revision: int, reason: str | None = None) -> int:
        """Put a delete marker on the run if it is still at ``last_revision``.

        The marker is the run's deletion event (``shared.runlog``): its body is
        the run as it was, so a reader that never saw the run still learns what
        went, and ``reason`` goes in a header. Returns the marker's revision
        (nats-py's ``KeyValue.delete`` does not). Raises Stale if the run changed.
        """
        return await self._write(run, last_revision, runlog.marker_headers(reason))


class RecentRuns:
    """The last written or read copy of recently active runs, with its revision.

    Only a hint: a transition judged on it is written with a compare-and-set
    on that revision, so a copy another orchestrator has since outdated makes
    the write fail and the run is read again; any other answer is given only
    after judging the stored run. That saves the read before most writes.
    Finished runs are dropped, and at most ``size`` are kept (oldest out).
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._runs: OrderedDict[str, tuple[FlowRun, int]] = OrderedDict()

    def get(self, run_id: str) -> tuple[FlowRun, int] | None:
        return self._runs.get(run_id)

    def forget(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def remember(self, run: FlowRun, revision: int) -> None:
        if run.state.type in TERMINAL_TYPES:
            self._runs.pop(run.id, None)
            return
        self._runs[run.id] = (run, revision)
        self._runs.move_to_end(run.id)
        if len(self._runs) > self._size:
            self._runs.popitem(last=False)


class IdempotencyStore:
    """Idempotency key -> run id, created once and never expired (see ``_keys``:
    only keys whose derived run was deleted, and keys from before, are here)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @staticmethod
    def key(scope: str, idempotency_key: str) -> str:
        return _digest(f"{scope}\x00{idempotency_key}")

    @staticmethod
    def reissued_key(scope: str, idempotency_key: str) -> str:
        """Where a key freed by deleting its derived-id run is bound to its next run."""
        return "r." + IdempotencyStore.key(scope, idempotency_key)

    async def claim(self, key: str, run_id: str) -> str:
        """Bind ``key`` to ``run_id`` unless already bound; return the bound id."""
        waited = _Waited(f"idempotency claim {key}")
        while True:
            try:
                await self._kv.create(key, run_id.encode(), validate_keys=False)
                return run_id
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            except nats.js.errors.NotFoundError:
                pass  # nats-py's create read the key to see if it was deleted: in flight
            try:
                entry = await self._kv.get(key, validate_keys=False)
            except nats.js.errors.NotFoundError:
                entry = None
            if entry is not None and entry.value:
                return entry.value.decode()
            # A write of the key is in flight (a replicated stream's 10164,
            # which nats-py reports as a wrong last sequence), or the key was
            # released in between: try again.
            await waited.pause()

    async def release(self, key: str, run_id: str) -> None:
        """Unbind ``key`` if it still names ``run_id`` (its run was deleted)."""
        try:
            entry = await self._kv.get(key, validate_keys=False)
        except nats.js.errors.NotFoundError:
            return
        if (entry.value or b"").decode() != run_id:
            return
        # Guarded by revision: a key bound again meanwhile is left alone.
        try:
            await self._kv.delete(key, last=entry.revision, validate_keys=False)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in LOST:
                raise


@functools.lru_cache(maxsize=4096)  # asked on every create; a digest each time otherwise
def index_key(full_name: str) -> str:
    """The key of a ``flow/deployment`` name's index in the deployments bucket."""
    return f"n.{_digest(full_name)}"


class NameIndex(msgspec.Struct, frozen=True, kw_only=True):
    """All versions of one ``flow/deployment`` name, oldest first."""

    full_name: str
    ids: list[str] = msgspec.field(default_factory=list)


class DeploymentStore:
    """Deployments under ``d.<id>``; a name index under ``n.<digest(name)>``."""

    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self._kv = kv
        self._js = js

    async def get(self, deployment_id: str) -> Deployment | None:
        return (await self.entry(deployment_id))[0]

    async def entry(self, deployment_id: str) -> tuple[Deployment | None, int]:
        """The deployment (None: none or deleted) and its key's revision (0: never written)."""
        try:
            entry = await self._kv.get(f"d.{deployment_id}", validate_keys=False)
        except nats.js.errors.NotFoundError:
            return None, 0
        value = decode(entry.value, Deployment) if entry.value else None
        return value, entry.revision or 0

    async def put(self, deployment: Deployment) -> int:
        """Store ``deployment``; returns the revision written."""
        return await self._kv.put(f"d.{deployment.id}", encode(deployment), validate_keys=False)

    async def delete(self, deployment_id: str) -> int:
        """Put a delete marker on a deployment; returns the marker's revision
        (nats-py's ``KeyValue.delete`` does not give it)."""
        ack = await self._js.publish(
            f"$KV.{DEPLOYMENTS_BUCKET}.d.{deployment_id}",
            headers={"KV-Operation": "DEL"},
            stream=kv_stream(DEPLOYMENTS_BUCKET),
        )
        return ack.seq

    async def index(self, full_name: str) -> tuple[NameIndex, int]:
        try:
            entry = await self._kv.get(index_key(full_name), validate_keys=False)
        except nats.js.errors.NotFoundError:
            return NameIndex(full_name=full_name), 0
        if not entry.value:
            return NameIndex(full_name=full_name), entry.revision or 0
        return decode(entry.value, NameIndex), entry.revision or 0

    async def set_index(self, index: NameIndex, last_revision: int) -> int:
        """Replace the name index if still at ``last_revision`` (0: create it);
        returns the revision written, or raises Stale."""
        key = index_key(index.full_name)
        try:
            if last_revision == 0:
                return await self._kv.create(key, encode(index), validate_keys=False)
            return await self._kv.update(
                key, encode(index), last=last_revision, validate_keys=False
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            raise Stale(key) from None

    async def all(self) -> list[Deployment]:
        """Every stored deployment version, read in one pass over the bucket.

        Reads the bucket's stream (last message per key) until the server says
        nothing is pending: a KV watcher's "initial values done" marker can
        arrive before every value has, so it is not used here.
        """
        js = self._js
        stream = kv_stream(DEPLOYMENTS_BUCKET)
        subjects = f"$KV.{DEPLOYMENTS_BUCKET}.d.*"
        info = await js.stream_info(stream, subjects_filter=subjects)
        if not info.state.subjects:
            return []
        sub = await js.subscribe(
            subjects,
            stream=stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        out: list[Deployment] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=5.0)
                deleted = (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE")
                if msg.data and not deleted:
                    out.append(decode(msg.data, Deployment))
                if msg.metadata.num_pending == 0:
                    return out
        finally:
            await sub.unsubscribe()
