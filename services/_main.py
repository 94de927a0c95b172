"""Running one service as a process: logging, uvloop, and shutdown on a signal.

Signals are not handled by callbacks that act; they end an ``async for`` over
``anyio.open_signal_receiver``, and leaving the service's context manager does
the orderly teardown.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from shared.settings import Settings

log = logging.getLogger("sluice")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


async def serve_until_signal(service: AbstractAsyncContextManager[Any], name: str) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with service:
            log.info("%s ready", name)
            async for signum in signals:
                log.info("%s: received %s; shutting down", name, signal.Signals(signum).name)
                break


def run_service(name: str, factory: Callable[[Settings], AbstractAsyncContextManager[Any]]) -> None:
    settings = Settings.from_env()
    setup_logging(settings.log_level)
    # A second Ctrl-C during shutdown interrupts it; exit quietly then too.
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(serve_until_signal, factory(settings), name, backend_options=backend_options())
