"""A client whose NATS is gone tries again with a growing wait, one log line per try."""

from __future__ import annotations

import itertools
import logging
import random
import re
from pathlib import Path

import anyio
import pytest

from services.dev import NatsServer
from shared.connection import RECONNECT_MAX_WAIT, RECONNECT_WAIT, connect, reconnect_delay
from shared.settings import Settings

pytestmark = pytest.mark.anyio

ATTEMPT = re.compile(r"cannot reach \S+ \(.*\); attempt (\d+) in ([\d.]+)s")


def test_the_wait_doubles_up_to_a_ceiling_with_jitter() -> None:
    rng = random.Random(7)
    for failed in range(30):
        expected = min(RECONNECT_MAX_WAIT, RECONNECT_WAIT * 2**failed)
        assert 0.8 * expected <= reconnect_delay(failed, rng) <= 1.2 * expected
    assert reconnect_delay(10**6, rng) <= 1.2 * RECONNECT_MAX_WAIT  # no overflow


class Lines(logging.Handler):
    """Keeps records; ``three`` is set once three reconnect attempts were announced."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.three = anyio.Event()

    def attempts(self) -> list[tuple[int, float]]:
        found = (ATTEMPT.search(r.getMessage()) for r in self.records)
        return [(int(m[1]), float(m[2])) for m in found if m]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.attempts()) >= 3:
            self.three.set()


async def test_a_lost_server_is_retried_with_backoff_and_one_line_each(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    lines = Lines()
    logger = logging.getLogger("sluice.nats")
    logger.addHandler(lines)
    old_level, logger.level = logger.level, logging.DEBUG
    try:
        reconnected = anyio.Event()

        async def on_reconnect() -> None:
            reconnected.set()

        settings = Settings(nats_url=server.url, home=tmp_path)
        nc = await connect(settings, name="backoff", wait=30, on_reconnect=on_reconnect)
        try:
            server.stop()
            with anyio.fail_after(120):  # a loaded machine; waits are a few seconds each
                await lines.three.wait()
            seen = lines.attempts()[:3]
            assert [n for n, _ in seen] == [2, 3, 4]
            for (_, before), (_, after) in itertools.pairwise(seen):
                assert after > before  # each wait longer than the last, up to the ceiling
            lost = next(i for i, r in enumerate(lines.records) if "disconnected" in r.getMessage())
            warnings = [
                r.getMessage() for r in lines.records[lost + 1 :] if r.levelno >= logging.WARNING
            ]
            assert len(warnings) == len(lines.attempts()), warnings  # one line per attempt

            server.start()
            with anyio.fail_after(120):
                await reconnected.wait()
            await nc.flush(timeout=30)  # it works again
            assert nc.is_connected
        finally:
            await nc.close()
    finally:
        logger.removeHandler(lines)
        logger.level = old_level
        server.stop()


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_closing_a_connection_whose_server_died_ends_its_subscriptions(
    own_server: NatsServer, tmp_path: Path
) -> None:
    """A service stops while its server is gone, with a message buffered for the
    next connection. Under uvloop (as services run), nats-py's close raised on
    flushing that buffer into the dead socket and skipped the rest: a reader of
    a subscription waited for ever. Closing drops the buffer first."""
    from shared.connection import close

    nc = await connect(Settings(nats_url=own_server.url, home=tmp_path), name="t")
    sub = await nc.subscribe("t.in")
    ended = anyio.Event()

    async def read() -> None:
        async for _ in sub.messages:
            pass
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        own_server.kill()
        with anyio.fail_after(30):
            while not nc.is_reconnecting:  # noqa: ASYNC110 - nats-py has no event for it
                await anyio.sleep(0.01)
        await nc.publish("t.out", b"for the next connection")
        await close(nc)
        with anyio.fail_after(30):
            await ended.wait()
    assert nc.is_closed
