"""The dispatch item of a due run is sent after the reply, and sent again until stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import anyio
import nats
import pytest
from nats.js.api import StreamConfig

from services.dev import NatsServer
from services.orchestrator._publish import Publisher
from shared import names
from shared.bootstrap import stream_configs
from shared.codec import decode
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
