"""The dispatch item of a due run is sent after the reply, and sent again until stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import anyio
import nats
import pytest
from nats.js.api import PersistMode, StreamConfig

from engine.client import Client
from services.dev import NatsServer
from services.orchestrator import Orchestrator
from services.orchestrator._publish import Publisher
from shared import names
from shared.bootstrap import ASYNC_FLUSH_API_LEVEL, bootstrap, dispatch_persist_mode, stream_configs
from shared.codec import decode
from shared.messages import RegisterDeployment
from shared.models import FlowRun
from shared.records import Dispatch
from shared.settings import Settings

from ._runs import scheduled_run

pytestmark = pytest.mark.anyio


def due_run() -> FlowRun:
    return scheduled_run(deployment_id=str(uuid.uuid4()), deployment_name="f/d")


def dispatch_config(url: str) -> StreamConfig:
    settings = Settings(nats_url=url)
    return next(c for c in stream_configs(settings) if c.name == names.DISPATCH_STREAM)


async def test_an_item_jetstream_did_not_store_is_sent_again_until_it_is(
    own_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    nc = await nats.connect(own_server.url)
    js = nc.jetstream()
    publisher = Publisher(js, retry_for=60.0)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(publisher.run)
            run = due_run()
            assert await publisher.offer(run, datetime.now(UTC))
            # No stream takes the item yet: it is refused ("no responders") and kept.
            assert not await publisher.settle(0.5)
            await js.add_stream(dispatch_config(own_server.url))
            assert await publisher.settle(30.0), "the item was never stored"
            assert "sending it again" in caplog.text
            info = await js.stream_info(names.DISPATCH_STREAM)
            assert info.state.messages == 1
            msg = await js.get_msg(names.DISPATCH_STREAM, seq=info.state.first_seq)
            assert decode(msg.data or b"", Dispatch).flow_run_id == run.id
            tg.cancel_scope.cancel()
    finally:
        await nc.close()


async def test_a_run_that_is_not_due_is_not_offered(own_server: NatsServer) -> None:
    nc = await nats.connect(own_server.url)
    publisher = Publisher(nc.jetstream())
    try:
        run = due_run()
        later = datetime(2000, 1, 1, tzinfo=UTC)  # "now" before the run's time
        assert not await publisher.offer(run, later)
        assert await publisher.settle(0)
    finally:
        await nc.close()


async def offered_runs(url: str) -> set[str]:
    """The runs the dispatch stream holds an item for."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        if not (await js.stream_info(names.DISPATCH_STREAM)).state.messages:
            return set()
        sub = await js.subscribe(f"{names.DISPATCH_PREFIX}.>", ordered_consumer=True)
        runs: set[str] = set()
        while True:
            msg = await sub.next_msg(timeout=5.0)
            runs.add(decode(msg.data, Dispatch).flow_run_id)
            if msg.metadata.num_pending == 0:
                return runs
    finally:
        await nc.close()


async def test_items_a_killed_server_had_not_flushed_yet_are_offered_again(
    own_server: NatsServer, tmp_path: Path
) -> None:
    """The dispatch stream is flushed in the background: a SIGKILL right after
    a burst of creates may take the newest items with it. The orchestrator
    offers them again when it reconnects, so every due run has its item."""
    settings = Settings(nats_url=own_server.url, home=tmp_path / "home", request_timeout=2.0)
    async with Orchestrator(settings, grace=1), Client(settings) as c:
        await c.register_deployment(RegisterDeployment(name="d", flow_name="burst"))
        created: set[str] = set()

        async def create() -> None:
            created.add((await c.create_flow_run("burst/d")).id)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(create)
        own_server.kill()  # SIGKILL the moment the last create is answered
        await anyio.to_thread.run_sync(own_server.start)
        with anyio.fail_after(60):
            while not created <= await offered_runs(own_server.url):  # noqa: ASYNC110
                await anyio.sleep(0.2)


async def test_on_one_server_only_the_dispatch_stream_is_flushed_in_the_background(
    own_server: NatsServer,
) -> None:
    """A create makes one fsync, the run's: its dispatch item is derived from
    the run, and offered again if a crash loses it (see ``_recovery``)."""
    nc = await nats.connect(own_server.url)
    js = nc.jetstream()
    try:
        await bootstrap(js, Settings(nats_url=own_server.url))
        assert (await js.account_info()).api.level >= ASYNC_FLUSH_API_LEVEL
        dispatch = await js.stream_info(names.DISPATCH_STREAM)
        assert dispatch.config.persist_mode == PersistMode.ASYNC
        for stream in (names.kv_stream(names.FLOW_RUNS_BUCKET), names.TASKRUNS_STREAM):
            assert (await js.stream_info(stream)).config.persist_mode is None
    finally:
        await nc.close()


def test_replicated_streams_and_older_servers_keep_every_write_fsynced() -> None:
    one, three = Settings(replicas=1), Settings(replicas=3)
    assert dispatch_persist_mode(one, ASYNC_FLUSH_API_LEVEL) is PersistMode.ASYNC
    assert dispatch_persist_mode(three, ASYNC_FLUSH_API_LEVEL) is None  # JetStream refuses it
    # 2.12 flushes asynchronously, but leaves a consumer ahead of a stream that lost its tail.
    assert dispatch_persist_mode(one, ASYNC_FLUSH_API_LEVEL - 1) is None
