"""The embedded stack: a private nats-server and every service, in one process.

``DevStack`` starts nats-server where ``SLUICE_NATS_URL`` points (data under
``$SLUICE_HOME/nats``), then enters each service's context manager in order,
and leaves them in reverse order on exit, stopping the server last. Its
runner serves the ``default`` queue and registers the example deployments
(``examples/deployments.py``; set ``SLUICE_EXAMPLES`` to another spec file,
or to nothing for none). Importing them is the one place user code is
imported in this process; each flow run still gets a process of its own.
Last comes the web UI (``ui_port``; None: no UI), whose address it prints.
"""

from __future__ import annotations

import logging
import os
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
