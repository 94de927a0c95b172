"""The web UI (``python -m services.ui``).

Owns: server-rendered pages and a live event stream over the same public
contract as the CLI (it reads through :class:`engine.client.Client` and acts as
the ``operator`` role). It keeps no state of its own beyond a process cache.
"""

from .app import build_app
from .service import DEFAULT_PORT, UIService

__all__ = ["DEFAULT_PORT", "UIService", "build_app"]
