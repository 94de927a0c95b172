"""What every request handler of the UI shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from engine.client import Client

from ._feed import RunFeed

__all__ = ["UI", "ui_of"]


@dataclass
class UI:
    client: Client
    feed: RunFeed
    env: jinja2.Environment
    nats_url: str
    closing: anyio.Event = field(default_factory=anyio.Event)
    """Set when the server shuts down: every event stream ends."""
    page_size: int = 25

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(nats_url=self.nats_url, **context)
        return HTMLResponse(html, status_code=status_code)

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)


def ui_of(request: Request) -> UI:
    ui: UI = request.app.state.ui
    return ui
