"""Creates resolve deployments from a watched cache: what others change is seen,
what the cache has not seen yet is read from KV, and unknown names still fail clearly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

from engine.client import Client
from services.orchestrator import Orchestrator
from services.orchestrator._deployment_cache import DeploymentCache
from services.orchestrator._deployments import Deployments
from services.orchestrator._store import DeploymentStore
from shared import names
from shared.bootstrap import leader_kv
from shared.clock import SystemClock
from shared.errors import AmbiguousName, DeploymentNotFound
from shared.messages import DeploymentRef, RegisterDeployment
from shared.settings import Settings

pytestmark = pytest.mark.anyio


async def caught_up(nc: NATS, *caches: DeploymentCache) -> None:
    """Wait until every cache has applied the bucket's newest revision."""
    js = nc.jetstream()
    with anyio.fail_after(10):
        last = (await js.stream_info(names.kv_stream(names.DEPLOYMENTS_BUCKET))).state.last_seq
        while True:  # fail_after bounds it
            if all(c.current and c.revision >= last for c in caches):
                return
            await anyio.sleep(0.01)


@pytest.fixture
async def pair(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, ...]]:
    """Two orchestrators in one queue group on one nats-server."""
    second = Settings(nats_url=settings.nats_url, home=tmp_path / "second")
    async with Orchestrator(settings, grace=1) as a, Orchestrator(second, grace=1) as b:
        yield a, b


async def test_changes_made_through_one_orchestrator_are_seen_by_the_other(
    pair: tuple[Orchestrator, Orchestrator], settings: Settings, nc: NATS, unique: str
) -> None:
    a, b = pair
    name = f"f{unique}/d"
    ref = DeploymentRef(name=name)
    v1 = await a.deployments.register(
        RegisterDeployment(name="d", flow_name=f"f{unique}", version="1", parameters={"x": 1})
    )
    await caught_up(nc, a.deployment_cache, b.deployment_cache)
    assert (await b.deployments.find(ref)).id == v1.id
    assert (await b.deployments.find(DeploymentRef(name=f"f{unique}"))).id == v1.id

    # changed in place, then a new version: the other orchestrator's creates follow
    await a.deployments.register(
        RegisterDeployment(name="d", flow_name=f"f{unique}", version="1", parameters={"x": 2})
    )
    await caught_up(nc, a.deployment_cache, b.deployment_cache)
    assert (await b.deployments.find(ref)).parameters == {"x": 2}
    v2 = await a.deployments.register(
        RegisterDeployment(name="d", flow_name=f"f{unique}", version="2", tags=["two"])
    )
    await caught_up(nc, a.deployment_cache, b.deployment_cache)
    assert (await b.deployments.find(ref)).id == v2.id
    async with Client(settings) as client:  # creates land on either orchestrator
        runs = [await client.create_flow_run(name) for _ in range(10)]
    assert {r.deployment_id for r in runs} == {v2.id}
    assert all(r.tags == ["two"] for r in runs)

    # deleted: a create on the other orchestrator is refused as for an unknown name
    await a.deployments.delete(DeploymentRef(name=name))
    await caught_up(nc, a.deployment_cache, b.deployment_cache)
    with pytest.raises(DeploymentNotFound, match=f"no deployment named '{name}'"):
        await b.deployments.find(ref)
    with pytest.raises(DeploymentNotFound, match=f"no deployment with id {v2.id}"):
        await b.deployments.find(DeploymentRef(id=v2.id))

    # registered again (a new id): found again
    v3 = await a.deployments.register(RegisterDeployment(name="d", flow_name=f"f{unique}"))
    await caught_up(nc, a.deployment_cache, b.deployment_cache)
    assert (await b.deployments.find(ref)).id == v3.id


async def test_a_create_right_after_a_register_elsewhere_finds_it(
    pair: tuple[Orchestrator, Orchestrator], settings: Settings, unique: str
) -> None:
    """No waiting for the watch: whichever orchestrator takes the create finds
    the deployment, from its cache or from KV."""
    async with Client(settings) as client:
        for i in range(20):
            flow = f"f{unique}-{i}"
            deployment = await client.register_deployment(
                RegisterDeployment(name="d", flow_name=flow)
            )
            run = await client.create_flow_run(f"{flow}/d")
            assert run.deployment_id == deployment.id


@pytest.fixture
async def frozen(
    orchestrator: Orchestrator, nc: NATS
) -> AsyncIterator[tuple[Deployments, DeploymentCache]]:
    """A second orchestrator's deployment handlers whose cache caught up once and
    then stopped following: it knows nothing registered after that."""
    js = nc.jetstream()
    kv = await leader_kv(js, names.DEPLOYMENTS_BUCKET)
    cache = DeploymentCache(nc, kv)
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.follow)
        await caught_up(nc, cache)
        tg.cancel_scope.cancel()
    yield Deployments(DeploymentStore(kv, js), SystemClock(), cache), cache


async def test_a_deployment_the_cache_has_not_seen_is_read_then_cached(
    orchestrator: Orchestrator,
    frozen: tuple[Deployments, DeploymentCache],
    unique: str,
) -> None:
    deployments, cache = frozen
    registered = await orchestrator.deployments.register(
        RegisterDeployment(name="d", flow_name=f"f{unique}")
    )
    name = f"f{unique}/d"
    assert cache.index(name) is None  # not seen: the watch is stopped
    assert (await deployments.find(DeploymentRef(name=name))).id == registered.id
    assert cache.deployment(registered.id) == registered  # read once, now held
    assert (await deployments.find(DeploymentRef(name=name))).id == registered.id
    assert (await deployments.find(DeploymentRef(id=registered.id))).id == registered.id
    assert (await deployments.find(DeploymentRef(name=f"f{unique}"))).id == registered.id


async def test_unknown_names_get_the_same_errors_as_without_a_cache(
    orchestrator: Orchestrator,
    frozen: tuple[Deployments, DeploymentCache],
    unique: str,
) -> None:
    deployments, _ = frozen
    for name in ("a", "b"):
        await orchestrator.deployments.register(
            RegisterDeployment(name=name, flow_name=f"f{unique}")
        )
    uncached = orchestrator.deployments
    for ref in (
        DeploymentRef(name=f"f{unique}/nope"),
        DeploymentRef(name=f"f{unique}/aa"),  # a near miss: "did you mean"
        DeploymentRef(name=f"g{unique}"),
        DeploymentRef(id="3c1b7c2e-0000-4000-8000-000000000000"),
    ):
        with pytest.raises(DeploymentNotFound) as cached_error:
            await deployments.find(ref)
        with pytest.raises(DeploymentNotFound) as exact_error:
            await uncached.resolve(ref)
        assert cached_error.value.message == exact_error.value.message
    with pytest.raises(AmbiguousName, match="pick one of"):
        await deployments.find(DeploymentRef(name=f"f{unique}"))
