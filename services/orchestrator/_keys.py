"""Idempotency keys: one run per key, checked by the run's own KV create.

A keyed create stores its run under an id derived from the key and its scope
(a UUID v5), with a create that fails if the id ever held a value, so the
write that stores the run is also the duplicate check: a second request with
the key finds the run there and answers it. No separate claim is written.

Deleting a run frees its key (``docs/contract.md``): the derived id then holds
a delete marker, and the next create with the key makes a new run under a
random id, bound to the key in the ``flow_run_idempotency`` bucket under
``r.<digest>`` *before* it is stored (the claim-then-store order below), so a
crash in between is finished by the next request instead of making two runs.

Keys claimed by orchestrators from before derived ids were bound only in that
bucket, under ``<digest>``. An orchestrator that finds any such entry at
start keeps claiming every key there first (``legacy``), so an upgrade never
answers a key with a second run.
"""

from __future__ import annotations

import uuid

import msgspec
import nats.js.errors
from nats.js import JetStreamContext

from shared import names
from shared.errors import Conflict
from shared.models import FlowRun

from ._store import Exists, IdempotencyStore, RunStore

#: The namespace of run ids derived from idempotency keys.
RUN_ID_NAMESPACE = uuid.UUID("0b9f0c1e-5a47-4f7c-9d55-3f2b6a1c8e21")

Stored = tuple[FlowRun, int, bool]
"""The run a key names, its revision, and whether this request stored it."""


def derived_run_id(scope: str, key: str) -> str:
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"{scope}\x00{key}"))


async def has_legacy_claims(js: JetStreamContext) -> bool:
    """Whether the idempotency bucket holds keys claimed the pre-derived-id way
    (one-token keys; the claims of freed keys are two-token ``r.<digest>``)."""
    bucket = names.IDEMPOTENCY_BUCKET
    try:
        await js.get_last_msg(names.kv_stream(bucket), f"$KV.{bucket}.*")
    except nats.js.errors.NotFoundError:
        return False
    return True


class Keys:
    def __init__(self, runs: RunStore, claims: IdempotencyStore, *, legacy: bool) -> None:
        self._runs = runs
        self._claims = claims
        self.legacy = legacy

    def run_id(self, scope: str, key: str) -> str:
        """The id a new run with this key is first tried under."""
        return str(uuid.uuid4()) if self.legacy else derived_run_id(scope, key)

    async def store(self, run: FlowRun, scope: str, key: str) -> Stored:
        """Store ``run`` (made with :meth:`run_id`) unless ``key`` already names a run."""
        if self.legacy:
            return await self._claim_then_store(run, IdempotencyStore.key(scope, key))
        try:
            return run, await self._runs.create(run, over_deleted=False), True
        except Exists:
            existing = await self._runs.get(run.id)
            if existing is not None:
                return *existing, False
        # The derived id's run was deleted, which freed the key.
        again = msgspec.structs.replace(run, id=str(uuid.uuid4()))
        return await self._claim_then_store(again, IdempotencyStore.reissued_key(scope, key))

    async def _claim_then_store(self, run: FlowRun, claim: str) -> Stored:
        bound = await self._claims.claim(claim, run.id)
        if bound != run.id:
            existing = await self._runs.get(bound)
            if existing is not None:
                return *existing, False
            # The first request with this key died after claiming it and
            # before storing its run: store that run now, under its id.
            run = msgspec.structs.replace(run, id=bound)
        try:
            return run, await self._runs.create(run), True
        except Exists:
            existing = await self._runs.get(run.id)
            if existing is None:  # pragma: no cover - deleted between our two calls
                raise Conflict(f"flow run {run.id} vanished while being created") from None
            return *existing, False

    async def release(self, run: FlowRun, scope: str) -> None:
        """Free the key of ``run``, which was just deleted."""
        key = run.idempotency_key
        if key is None or run.id == derived_run_id(scope, key):
            return  # its own delete marker freed the key
        for claim in (IdempotencyStore.reissued_key(scope, key), IdempotencyStore.key(scope, key)):
            await self._claims.release(claim, run.id)
