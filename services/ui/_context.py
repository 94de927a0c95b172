"""What every request handler of the UI shares."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import jinja2
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse

from engine.client import Client
from shared.errors import NotFound, SluiceError
from shared.messages import RunnerStatus

from ._auth import Access
from ._feed import RunFeed

__all__ = ["UI", "deployment_id_of", "run_id_of", "ui_of"]

_NOBODY = "00000000-0000-0000-0000-000000000000"


@dataclass
class UI:
    client: Client
    feed: RunFeed
    env: jinja2.Environment
    nats_url: str
    access: Access = field(default_factory=Access)
    closing: anyio.Event = field(default_factory=anyio.Event)
    """Set when the server shuts down: every event stream ends."""
    page_size: int = 25
    runners_seen: dict[str, RunnerStatus] = field(default_factory=dict)
    """The last heartbeat of each runner this UI saw (lost ones stay shown a while)."""
    _probe: tuple[float, str | None] = (-1e9, None)
    _probing: anyio.Lock = field(default_factory=anyio.Lock)

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(nats_url=self.nats_url, **context)
        return HTMLResponse(html, status_code=status_code)

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)

    async def stack_problem(self, fresh_for: float = 3.0) -> str | None:
        """Why the stack cannot be reached now (None: it answers).

        Asks the orchestrator for a deployment that does not exist: "not
        found" is an answer. One probe at a time, and its result is reused
        for ``fresh_for`` seconds, however many pages ask.
        """
        async with self._probing:
            at, problem = self._probe
            if anyio.current_time() - at < fresh_for:
                return problem
            if not self.client.nc.is_connected:
                problem = "NATS is not connected"
            else:
                try:
                    await self.client.read_deployment(id=_NOBODY)
                    problem = None
                except NotFound:
                    problem = None
                except SluiceError as exc:
                    problem = exc.message
            self._probe = (anyio.current_time(), problem)
            return problem


def ui_of(request: Request) -> UI:
    ui: UI = request.app.state.ui
    return ui


def run_id_of(request: Request) -> str:
    text = request.path_params["run_id"]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise HTTPException(404, f"{text!r} is not a flow run id") from None


def deployment_id_of(request: Request) -> str:
    text = request.path_params["deployment_id"]
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise HTTPException(404, f"{text!r} is not a deployment id") from None
