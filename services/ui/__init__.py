"""The web UI: server-rendered pages over the same public contract as the CLI."""

from .app import build_app
from .service import DEFAULT_PORT, UIService

__all__ = ["DEFAULT_PORT", "UIService", "build_app"]
