"""Deployment handlers: register, resolve by id or name, list, pause, resume, delete.

A ``flow/deployment`` name may have several versions; registering an existing
name with a new version adds a version, and a name resolves to the newest.
Registering the same version again updates it in place (same id).
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Iterable

import msgspec

from shared.clock import Clock
from shared.codec import decode_request
from shared.errors import AmbiguousName, DeploymentNotFound, MalformedRequest
from shared.messages import (
    Deleted,
    DeploymentPage,
    DeploymentRef,
    ListDeployments,
    RegisterDeployment,
)
from shared.models import Deployment
from shared.schedules import check_schedule, with_schedule_types

from . import _params
from ._deployment_cache import DEPLOYMENT_PREFIX, DeploymentCache
from ._store import DeploymentStore, NameIndex, Stale, after_stale, index_key

CAS_ATTEMPTS = 20


def check_schedules(req: RegisterDeployment) -> None:
    """Refuse invalid cron, rrule or time zone text, naming the field."""
    for i, item in enumerate(req.schedules):
        try:
            check_schedule(item.schedule, f"schedules[{i}].schedule")
        except ValueError as exc:
            raise MalformedRequest(str(exc)) from None


def decode_register(data: bytes, max_bytes: int) -> RegisterDeployment:
    """Decode ``deployment.register``, accepting the seeds' dict form of a
    schedule (``{"cron": "0 * * * *"}``, no ``type``) as well as the tagged one."""
    try:
        return decode_request(data, RegisterDeployment, max_bytes=max_bytes)
    except MalformedRequest as first:
        try:
            raw = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError):  # not JSON, or absurdly deep
            raise first from None
        fixed = with_schedule_types(raw)
        if fixed == raw:
            raise
        return decode_request(msgspec.json.encode(fixed), RegisterDeployment, max_bytes=max_bytes)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _newest_per_name(deployments: Iterable[Deployment]) -> dict[str, Deployment]:
    newest: dict[str, Deployment] = {}
    for d in deployments:
        seen = newest.get(d.full_name)
        if seen is None or d.created >= seen.created:
            newest[d.full_name] = d
    return newest


def _did_you_mean(given: str, known: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest of ``known`` to a misspelled name, or ''."""
    close = difflib.get_close_matches(given, sorted(set(known)), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


class Deployments:
    """Deployment handlers. With a ``cache``, :meth:`find` and :meth:`get` (what
    creates and transitions read) answer from it when they can; registering,
    pausing, deleting and the ``deployment.*`` reads always read KV."""

    def __init__(
        self, store: DeploymentStore, clock: Clock, cache: DeploymentCache | None = None
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache = cache

    async def register(self, req: RegisterDeployment) -> Deployment:
        _params.check_schema(req.parameter_schema)
        check_schedules(req)
        full_name = f"{req.flow_name}/{req.name}"
        fields = msgspec.structs.asdict(req)
        for tries in range(CAS_ATTEMPTS):
            now = self._clock.now()
            index, revision = await self._store.index(full_name)
            same_version = None
            for deployment_id in index.ids:
                existing = await self._store.get(deployment_id)
                if existing is not None and existing.version == req.version:
                    same_version = existing
            deployment = Deployment(
                id=same_version.id if same_version else str(uuid.uuid4()),
                created=same_version.created if same_version else now,
                updated=now,
                **fields,
            )
            self._took(f"d.{deployment.id}", deployment, await self._store.put(deployment))
            if deployment.id in index.ids:
                return deployment
            try:
                new_index = NameIndex(full_name=full_name, ids=[*index.ids, deployment.id])
                written = await self._store.set_index(new_index, revision)
            except Stale:
                # a concurrent register won; retry
                self._took(f"d.{deployment.id}", None, await self._store.delete(deployment.id))
                await after_stale(tries)
                continue
            self._took(index_key(full_name), new_index, written)
            return deployment
        raise MalformedRequest(f"too many concurrent registrations of {full_name}; try again")

    def _took(self, key: str, value: Deployment | NameIndex | None, revision: int) -> None:
        """Tell the cache about a write of ours, so it need not wait for its watch."""
        if self._cache is not None:
            self._cache.take(key, value, revision)

    async def get(self, deployment_id: str) -> Deployment | None:
        """A deployment by id, from the cache if it holds it (a run's deployment)."""
        if self._cache is not None:
            cached = self._cache.deployment(deployment_id)
            if cached is not None:
                return cached
        return await self._read(deployment_id)

    async def _read(self, deployment_id: str) -> Deployment | None:
        """A deployment by id from KV (then cached)."""
        deployment, revision = await self._store.entry(deployment_id)
        if revision:
            self._took(DEPLOYMENT_PREFIX + deployment_id, deployment, revision)
        return deployment

    async def find(self, ref: DeploymentRef) -> Deployment:
        """As :meth:`resolve`, answered from the cache when it holds an answer:
        what a create uses. A name the cache cannot resolve is resolved from
        KV, so a name registered elsewhere a moment ago is found, and an
        unknown one gets :meth:`resolve`'s error."""
        cache = self._cache
        if cache is not None and not ref.id and ref.name:
            found: Deployment | None = None
            if "/" in ref.name:
                index = cache.index(ref.name)
                ids = reversed(index.ids) if index is not None else ()
                found = next(filter(None, map(cache.deployment, ids)), None)
            else:
                every = cache.deployments()
                newest = _newest_per_name(d for d in every or () if d.flow_name == ref.name)
                found = next(iter(newest.values())) if len(newest) == 1 else None
            if found is not None:
                return found
        if ref.id:
            deployment = await self.get(ref.id)
            if deployment is None:
                raise DeploymentNotFound(f"no deployment with id {ref.id}")
            return deployment
        return await self.resolve(ref)

    async def resolve(self, ref: DeploymentRef) -> Deployment:
        """Find a deployment by id, ``flow/deployment``, or a flow name with one deployment."""
        if ref.id:
            deployment = await self._read(ref.id)
            if deployment is None:
                raise DeploymentNotFound(f"no deployment with id {ref.id}")
            return deployment
        if not ref.name:
            raise MalformedRequest("give a deployment id or name")
        if "/" in ref.name:
            return await self._by_full_name(ref.name)
        return await self._by_flow_name(ref.name)

    async def _by_full_name(self, full_name: str) -> Deployment:
        index, revision = await self._store.index(full_name)
        if revision:
            self._took(index_key(full_name), index, revision)
        for deployment_id in reversed(index.ids):
            deployment = await self._read(deployment_id)
            if deployment is not None:
                return deployment
        flow_name = full_name.split("/", 1)[0]
        every = await self._store.all()
        choices = sorted(_newest_per_name(d for d in every if d.flow_name == flow_name))
        hint = _did_you_mean(full_name, (d.full_name for d in every))
        if choices and not hint:
            hint = f"; deployments of flow {flow_name!r}: {', '.join(choices)}"
        raise DeploymentNotFound(
            f"no deployment named {full_name!r}{hint}", details={"choices": choices}
        )

    async def _by_flow_name(self, flow_name: str) -> Deployment:
        every = await self._store.all()
        newest = _newest_per_name(d for d in every if d.flow_name == flow_name)
        if not newest:
            hint = _did_you_mean(flow_name, (d.flow_name for d in every))
            raise DeploymentNotFound(
                f"no deployment of flow {flow_name!r}{hint or '; name one as FLOW/DEPLOYMENT'}"
            )
        if len(newest) > 1:
            choices = sorted(newest)
            raise AmbiguousName(
                f"flow {flow_name!r} has {len(choices)} deployments; pick one of: "
                + ", ".join(choices),
                details={"choices": choices},
            )
        return next(iter(newest.values()))

    async def _of_flow(self, flow_name: str) -> list[Deployment]:
        return [d for d in await self._store.all() if d.flow_name == flow_name]

    async def page(self, req: ListDeployments) -> DeploymentPage:
        stored = await self._store.all()
        found = [
            d
            for d in (stored if req.all_versions else _newest_per_name(stored).values())
            if (req.flow_name is None or d.flow_name == req.flow_name)
            and all(t in d.tags for t in req.tags)
        ]
        found.sort(key=lambda d: (d.full_name, d.created, d.id))
        page = found[req.offset : req.offset + req.limit]
        more = req.offset + req.limit < len(found)
        return DeploymentPage(
            deployments=page,
            offset=req.offset,
            next_offset=req.offset + req.limit if more else None,
        )

    async def ids_for(self, ref: str) -> list[str]:
        """Every version id of a deployment named like ``resolve`` accepts, or an id."""
        if _is_uuid(ref):
            return [ref]
        full_name = ref if "/" in ref else (await self._by_flow_name(ref)).full_name
        index, _ = await self._store.index(full_name)
        return list(index.ids)

    async def set_paused(self, ref: DeploymentRef, paused: bool) -> Deployment:
        deployment = await self.resolve(ref)
        updated = msgspec.structs.replace(deployment, paused=paused, updated=self._clock.now())
        self._took(f"d.{updated.id}", updated, await self._store.put(updated))
        return updated

    async def delete(self, ref: DeploymentRef) -> Deleted:
        """By id: that version. By name: every version of the name."""
        deployment = await self.resolve(ref)
        for tries in range(CAS_ATTEMPTS):
            index, revision = await self._store.index(deployment.full_name)
            doomed = [deployment.id] if ref.id else list(index.ids)
            keep = [i for i in index.ids if i not in doomed]
            try:
                written = await self._store.set_index(
                    NameIndex(full_name=deployment.full_name, ids=keep), revision
                )
            except Stale:
                await after_stale(tries)
                continue
            self._took(
                index_key(deployment.full_name),
                NameIndex(full_name=deployment.full_name, ids=keep),
                written,
            )
            for deployment_id in doomed:
                self._took(f"d.{deployment_id}", None, await self._store.delete(deployment_id))
            return Deleted(id=deployment.id)
        raise MalformedRequest(f"too many concurrent changes to {deployment.full_name}; try again")
