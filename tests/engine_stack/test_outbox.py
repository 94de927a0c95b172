"""The outbox a run's records go through (``engine._stack.outbox``): a stream
that does not answer for a while (a cluster electing a leader) delays records
within the grace; past it, a record is given up on and said so."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
import pytest
from nats.aio.client import Client as NATS

from engine._stack.outbox import Outbox

pytestmark = pytest.mark.anyio


class _Watched:
    """The real JetStream context, telling the test when ``failures`` publishes failed."""

    def __init__(self, js: Any, failures: int) -> None:
        self._js = js
        self._failures = failures
        self.failed = anyio.Event()

    async def publish_async(self, *args: Any, **kwargs: Any) -> Any:
        return await self._js.publish_async(*args, **kwargs)

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._js.publish(*args, **kwargs)
        except Exception:
            self._failures -= 1
            if self._failures == 0:
                self.failed.set()
            raise


async def test_a_record_waits_for_its_stream_within_the_grace(nc: NATS) -> None:
    subject = f"outbox-{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    watched = _Watched(js, failures=5)  # more than a few quick tries would make
    outbox = Outbox(watched, ack_timeout=1.0, grace=600.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.run)
        outbox.put(subject, b"kept")
        flushed = anyio.Event()

        async def flush() -> None:
            await outbox.flush()
            flushed.set()

        tg.start_soon(flush)
        await watched.failed.wait()  # no stream answers yet: tried again and again
        assert not flushed.is_set()
        await js.add_stream(name=subject.upper(), subjects=[subject])
        await flushed.wait()
        tg.cancel_scope.cancel()
    assert outbox.lost == 0
    assert (await js.get_last_msg(subject.upper(), subject)).data == b"kept"
    await js.delete_stream(subject.upper())


async def test_a_record_past_the_grace_is_given_up_on_and_logged(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    subject = f"outbox-{uuid.uuid4().hex[:8]}"
    outbox = Outbox(nc.jetstream(), ack_timeout=1.0, grace=0.0)
    with caplog.at_level(logging.ERROR, logger="sluice.engine"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.run)
            outbox.put(subject, b"lost")
            await outbox.flush()
            tg.cancel_scope.cancel()
    assert outbox.lost == 1
    assert f"a record for {subject} was lost after 1 tries" in caplog.text
