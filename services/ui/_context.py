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
from shared.messages import RunnerStatus

from ._auth import Access
from ._feed import RunFeed

__all__ = ["UI", "deployment_id_of", "run_id_of", "ui_of"]


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

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(nats_url=self.nats_url, **context)
        return HTMLResponse(html, status_code=status_code)

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)


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
