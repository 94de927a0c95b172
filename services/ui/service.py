"""The web UI service: a NATS connection, the run feed, and uvicorn serving the app.

It only reads and requests what the public contract offers (see
:mod:`services.ui.app`); it never writes state itself and never imports
user code. It needs no bucket to exist when it starts: pages say the stack
is unavailable until the orchestrator is up, and the run feed retries.

Shutdown: the event streams end first (browsers reconnect later by
themselves), then uvicorn closes its connections within a grace period,
then the feed and the connection go.
"""

from __future__ import annotations

import logging
import socket
from contextlib import AsyncExitStack

import anyio
import uvicorn
from nats.aio.client import Client as NATS

from engine.client import Client
from services._service import Service
from shared.connection import close, connect
from shared.errors import RequestError, StackUnavailable
from shared.settings import Settings

from ._auth import Access
from ._context import UI
from ._feed import RunFeed
from ._templates import environment
from .app import Gate, build_app

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "UIService"]

log = logging.getLogger("sluice.ui")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8480


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StackUnavailable(
            f"the web UI cannot listen on {host}:{port} ({exc.strerror}); "
            "is another Sluice UI running? Choose a port with --port (or SLUICE_UI_PORT)."
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class UIService(Service):
    def __init__(
        self,
        settings: Settings,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        grace: float = 3.0,
        access: Access | None = None,
    ) -> None:
        """``access``: login, read-only mode; by default from ``SLUICE_UI_*`` (see ``_auth``)."""
        super().__init__()
        self.settings = settings
        self.access = access
        self.host = host
        self.port = port
        self.grace = grace

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else host
        return f"http://{shown}:{self.port}"

    async def _start(self, stack: AsyncExitStack) -> None:
        if self.access is None:
            try:
                self.access = Access.from_env()
            except ValueError as exc:
                raise RequestError(str(exc)) from None
        sock = _listen(self.host, self.port)
        stack.callback(sock.close)
        self.port = sock.getsockname()[1]  # the real one when 0 was asked for
        # Serving starts before NATS is reached: until it is, every page is a
        # 503 that says what the UI waits for (a browser never hangs).
        gate = Gate(self.settings.nats_url)
        connection: list[NATS] = []

        async def close_connection() -> None:
            for nc in connection:
                await close(nc)

        stack.push_async_callback(close_connection)
        config = uvicorn.Config(
            gate,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(self.grace) or 1,
        )
        server = uvicorn.Server(config)
        served = anyio.Event()

        async def serve() -> None:
            try:
                # _serve, not serve(): signals are the process's business
                # (services._main), and serve() would take them over.
                await server._serve([sock])
            finally:
                served.set()

        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(serve)
        closing: list[tuple[UI, RunFeed]] = []

        async def stop() -> None:
            for ui, feed in closing:
                ui.closing.set()
                feed.close()
            server.should_exit = True
            with anyio.move_on_after(self.grace + 2):
                await served.wait()

        stack.push_async_callback(stop)
        log.info(
            "web UI on %s%s%s",
            self.url,
            " (login required)" if self.access.login else "",
            " (read-only)" if self.access.read_only else "",
        )
        nc = await connect(self.settings, name="sluice-ui")
        connection.append(nc)
        feed = RunFeed(nc)
        ui = UI(
            client=Client(self.settings, nc=nc),
            feed=feed,
            env=environment(),
            nats_url=self.settings.nats_url,
            access=self.access,
        )
        closing.append((ui, feed))
        await tg.start(feed.run)
        gate.app = build_app(ui)
