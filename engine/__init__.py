"""The Sluice SDK: what users import.

The client for a running stack lives here; flows, tasks and the runner
build on it.
"""

from .client import Client
from .sync import SyncClient

__all__ = ["Client", "SyncClient"]
