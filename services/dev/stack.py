"""The embedded stack: a private nats-server and every service, in one process.

``DevStack`` starts nats-server where ``SLUICE_NATS_URL`` points (data under
``$SLUICE_HOME/nats``), then enters each service's context manager in order,
and leaves them in reverse order on exit, stopping the server last. Its
runner serves the ``default`` queue and registers the example deployments
(``examples/deployments.py``; set ``SLUICE_EXAMPLES`` to another spec file,
or to nothing for none). Importing them is the one place user code is
imported in this process; each flow run still gets a process of its own.
Last comes the web UI (``ui_port``; None: no UI), whose address it prints.

The server is a child it keeps up: if it exits (killed, out of memory), it
is started again on the same data, and the services reconnect by
themselves. One that keeps exiting stops the stack with its log's last lines.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import urlparse

import anyio

from services._service import Service
from services.cancellation_watcher import CancellationWatcher
from services.orchestrator import Orchestrator
from services.runner import RunnerService
from services.scheduler import Scheduler
from services.ui import DEFAULT_PORT as UI_DEFAULT_PORT
from services.ui import UIService
from shared.errors import StackUnavailable
from shared.settings import Settings

from ._natsserver import NatsServer, port_is_free

log = logging.getLogger("sluice.dev")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1", ""}
#: How often the stack looks at its nats-server, and how many restarts within
#: RESTART_WINDOW seconds it makes before it gives up.
SERVER_CHECK_INTERVAL = 0.5
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def server_for(settings: Settings) -> NatsServer:
    """A NatsServer listening where the settings' URL points, on this machine."""
    url = urlparse(settings.nats_url.split(",")[0].strip())
    host = url.hostname or "127.0.0.1"
    if host not in LOCAL_HOSTS:
        raise StackUnavailable(
            f"SLUICE_NATS_URL points at {host}, which is not this machine; the embedded "
            "stack starts its own server on a local address (e.g. nats://127.0.0.1:4222)"
        )
    return NatsServer(
        settings.home / "nats",
        host="127.0.0.1" if host in ("localhost", "") else host,
        port=url.port or 4222,
    )


def examples_file() -> Path | None:
    """The example deployments to serve: $SLUICE_EXAMPLES, ./examples, or the repo's."""
    explicit = os.environ.get("SLUICE_EXAMPLES")
    if explicit is not None:
        return Path(explicit) if explicit else None
    for folder in (Path.cwd() / "examples", Path(__file__).resolve().parents[2] / "examples"):
        if (folder / "deployments.py").is_file():
            return folder / "deployments.py"
    return None


class DevStack(Service):
    def __init__(
        self,
        settings: Settings,
        *,
        ui_port: int | None = UI_DEFAULT_PORT,
        ui_explicit: bool = False,
    ) -> None:
        """``ui_port``: where the web UI listens (None: no UI). Unless the port
        was asked for (``ui_explicit``), a busy default port gives way to a free one."""
        super().__init__()
        self.settings = settings
        self.server = server_for(settings)
        self.ui_port = ui_port
        self.ui_explicit = ui_explicit
        self.ui: UIService | None = None
        self._runner: RunnerService | None = None

    async def hurry(self) -> None:
        """A second Ctrl-C: the runner kills its runs instead of letting them finish."""
        if self._runner is not None:
            await self._runner.hurry()

    async def _start(self, stack: AsyncExitStack) -> None:
        await anyio.to_thread.run_sync(self.server.start)
        stack.callback(self.server.stop)
        log.info("nats-server listening on %s (data in %s)", self.server.url, self.server.store_dir)
        watch = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(watch.cancel_scope.cancel)  # runs first: the watch ends before the server
        watch.start_soon(self._keep_server_up)
        await stack.enter_async_context(Orchestrator(self.settings))
        await stack.enter_async_context(CancellationWatcher(self.settings))
        await stack.enter_async_context(Scheduler(self.settings))
        examples = examples_file()
        self._runner = await stack.enter_async_context(
            RunnerService(
                self.settings,
                name="dev",
                limit=8,
                queue="default",
                register=[str(examples)] if examples else [],
            )
        )
        if self.ui_port is not None:
            port = self.ui_port
            if not self.ui_explicit and port and not port_is_free("127.0.0.1", port):
                log.warning("port %d is in use; the web UI takes a free port instead", port)
                port = 0
            self.ui = await stack.enter_async_context(UIService(self.settings, port=port))
            print(f"Sluice web UI: {self.ui.url}", flush=True)

    async def _keep_server_up(self) -> None:
        """Start the server again whenever it exits; once it keeps exiting, fail
        the stack (see Service.fail: raising here would run the teardown cancelled)."""
        restarts: list[float] = []
        while True:
            await anyio.sleep(SERVER_CHECK_INTERVAL)
            code = self.server.exit_code
            if code is None:
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
            tail = self.server.log_tail(5)
            if len(restarts) > MAX_RESTARTS:
                # Runs cannot report without a server: stop them rather than drain.
                self.fail(
                    StackUnavailable(
                        f"nats-server exited {len(restarts)} times within {RESTART_WINDOW:g}s "
                        f"(last with {code}); stopping the stack. Its log "
                        f"({self.server.log_path}) ends:\n{tail}"
                    )
                )
                await self.hurry()
                return
            log.error(
                "nats-server exited with %s; starting it again on the same data (%s). "
                "Its log ends:\n%s",
                code,
                self.server.store_dir,
                tail,
            )
            try:
                await anyio.to_thread.run_sync(self.server.start)
            except StackUnavailable as exc:  # counted as one more exit at the next look
                log.error("starting nats-server again failed: %s", exc)
                continue
            log.info("nats-server is back on %s; the services reconnect", self.server.url)
