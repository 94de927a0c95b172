"""The ``deployments`` bucket as last seen by a watch, so a create reads no KV.

A create resolves its deployment on every request; reading the name index and
the deployment from KV cost two round trips each time. This cache follows the
bucket with a watch instead (the whole bucket: ``d.<id>`` deployments and the
``n.<digest>`` name index), applied in stream order, so what it holds is the
bucket as it was at some recent revision. A deployment registered, changed or
deleted by another orchestrator (or the CLI through one) is seen as soon as
the watch delivers it, which is milliseconds; this orchestrator's own writes
are applied at once (:meth:`take` with the revision the write returned).

It is only used to *find* a deployment. Whatever it does not hold — a name
registered elsewhere a moment ago, anything before the watch caught up or
after a reconnect — is read from KV by the caller and then cached, and a miss
is never an answer on its own: an unknown name is looked up again in KV
before it is refused. Every entry keeps its revision, so a slower read never
overwrites a newer value the watch already applied.
"""

from __future__ import annotations

import contextlib
import logging

import anyio
import anyio.abc
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from shared import names
from shared.codec import decode
from shared.models import Deployment

from ._store import NameIndex, index_key

log = logging.getLogger("sluice.orchestrator")

DEPLOYMENT_PREFIX, INDEX_PREFIX = "d.", "n."
_REMOVED = ("DEL", "PURGE")

Value = Deployment | NameIndex | None
"""A decoded entry; None for a deleted key (kept for its revision)."""


class DeploymentCache:
    def __init__(self, nc: NATS, kv: KeyValue) -> None:
        self._nc = nc
        self._kv = kv
        self._entries: dict[str, tuple[Value, int]] = {}
        self._caught_up_at: int | None = None
        """The connection's reconnect count when the watch last caught up; None: not yet."""
        self.revision = 0
        """The newest bucket revision the watch delivered (tests wait for it)."""

    @property
    def current(self) -> bool:
        """Caught up with the bucket since the last (re)connect: safe to answer from."""
        return self._caught_up_at == self._nc.stats["reconnects"]

    # --- lookups: None means "not known here", never "does not exist" ----------------
    def deployment(self, deployment_id: str) -> Deployment | None:
        value = self._lookup(DEPLOYMENT_PREFIX + deployment_id)
        return value if isinstance(value, Deployment) else None

    def index(self, full_name: str) -> NameIndex | None:
        value = self._lookup(index_key(full_name))
        return value if isinstance(value, NameIndex) else None

    def deployments(self) -> list[Deployment] | None:
        """Every deployment held, or None when the cache is not current."""
        if not self.current:
            return None
        return [v for v, _ in self._entries.values() if isinstance(v, Deployment)]

    def _lookup(self, key: str) -> Value:
        if not self.current:
            return None
        found = self._entries.get(key)
        return found[0] if found else None

    # --- updates ------------------------------------------------------------------------
    def take(self, key: str, value: Value, revision: int) -> None:
        """Hold ``value`` for ``key`` unless a newer revision of it is held."""
        held = self._entries.get(key)
        if held is None or held[1] < revision:
            self._entries[key] = (value, revision)

    def _apply(self, key: str, operation: str | None, data: bytes | None, revision: int) -> None:
        value: Value = None
        if operation not in _REMOVED and data:
            try:
                if key.startswith(DEPLOYMENT_PREFIX):
                    value = decode(data, Deployment)
                elif key.startswith(INDEX_PREFIX):
                    value = decode(data, NameIndex)
                else:
                    return  # not a key this cache serves
            except msgspec.DecodeError as exc:
                log.error("deployment cache: skipping undecodable %s: %s", key, exc)
                value = None
        self.take(key, value, revision)

    async def follow(self) -> None:
        """Watch the bucket until cancelled, rebuilding the watch after a reconnect
        (nats-py's watchers can go quiet across one)."""
        js = self._nc.jetstream()
        while True:
            reconnects = self._nc.stats["reconnects"]
            try:
                # The watcher's "initial values done" marker can come before the
                # last value has: caught up means the stream's last revision seen.
                target = (await js.stream_info(names.kv_stream(names.DEPLOYMENTS_BUCKET))).state
                watcher = await self._kv.watchall()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("deployment cache: cannot watch (%s); retrying", exc)
                await anyio.sleep(1.0)
                continue
            seen = 0
            try:
                while self._nc.stats["reconnects"] == reconnects:
                    try:
                        entry = await watcher.updates(timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    if entry is not None:
                        seen = max(seen, entry.revision or 0)
                        self.revision = max(self.revision, seen)
                        self._apply(entry.key, entry.operation, entry.value, entry.revision or 0)
                    if self._caught_up_at != reconnects and seen >= target.last_seq:
                        self._caught_up_at = reconnects
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()
