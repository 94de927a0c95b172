"""Pulling dispatch items: binding to the consumer, a pull that a reconnect
abandons, and keeping an item.

The orchestrator makes the dispatch consumers; :func:`subscribe_when_ready`
binds a runner to its own, waiting while the stack is still starting.

A pull request waits on the server; when nats-server restarts it forgets
the pull, and nats-py keeps waiting for its reply until the pull's own
time-out. :func:`fetch_unless` gives up on it at the reconnect, so the
caller asks again at once. The dispatch consumer's ack wait is short
(:data:`shared.dispatch.ACK_WAIT`); :func:`keep_in_progress` keeps an item
while it is being claimed, so only a stopped or dead runner loses it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

from engine.client import Client
from shared.dispatch import PROGRESS_SECONDS
from shared.errors import StackUnavailable
from shared.starting import pause_while_starting

log = logging.getLogger("sluice.runner")


async def subscribe_when_ready(client: Client, filters: list[str], runner: str) -> Any:
    """A pull subscription on the dispatch consumer for ``filters``, waiting for it
    while the stack is still starting.

    Services may start in any order (compose starts them together); only the
    orchestrator creates streams and consumers, so a runner that comes first
    waits (a stop signal ends that wait: :func:`pause_while_starting`).
    """
    warned = False
    while True:
        try:
            return await _subscribe(client, filters)
        except (nats.js.errors.NotFoundError, StackUnavailable) as exc:
            if not warned:
                log.warning(
                    "runner %s: waiting for the stack to create its dispatch consumer (%s)",
                    runner,
                    exc,
                )
                warned = True
            await pause_while_starting(0.5)


async def _subscribe(client: Client, filters: list[str]) -> Any:
    # Every runner serving the same thing shares one durable consumer, which
    # the orchestrator makes: runners may pull, not configure.
    made = await client.dispatch_consumer(filters)
    js = client.nc.jetstream()
    return await js.pull_subscribe_bind(durable=made.durable, stream=made.stream)


async def fetch_unless(
    sub: Any, timeout: float, reconnected: anyio.Event
) -> tuple[list[Msg], Exception | None]:
    """At most one item within ``timeout``, and the error that ended the pull
    early, if one did; ``([], None)`` on a time-out or once ``reconnected`` is set."""
    msgs: list[Msg] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as race:

        async def fetch() -> None:
            try:
                msgs.extend(await sub.fetch(1, timeout=timeout))
            except nats.errors.TimeoutError:
                pass
            except (nats.errors.Error, OSError) as exc:
                failed.append(exc)
            race.cancel_scope.cancel()

        async def reissue() -> None:
            await reconnected.wait()
            race.cancel_scope.cancel()

        race.start_soon(fetch)
        race.start_soon(reissue)
    return msgs, (failed[0] if failed else None)


async def keep_in_progress(msg: Msg) -> None:
    """Tell JetStream every PROGRESS_SECONDS that ``msg`` is still being worked on."""
    while True:
        await anyio.sleep(PROGRESS_SECONDS)
        with contextlib.suppress(nats.errors.Error):
            await msg.in_progress()
