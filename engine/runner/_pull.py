"""Pulling dispatch items: a pull that a reconnect abandons, and keeping an item.

A pull request waits on the server; when nats-server restarts it forgets
the pull, and nats-py keeps waiting for its reply until the pull's own
time-out. :func:`fetch_unless` gives up on it at the reconnect, so the
caller asks again at once. The dispatch consumer's ack wait is short
(:data:`shared.dispatch.ACK_WAIT`); :func:`keep_in_progress` keeps an item
while it is being claimed, so only a stopped or dead runner loses it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import nats.errors
from nats.aio.msg import Msg

from shared.dispatch import PROGRESS_SECONDS


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
