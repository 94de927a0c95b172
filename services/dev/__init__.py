"""The embedded stack (``sluice dev``): a private nats-server plus every service, in one process.

Owns: finding and starting the ``nats-server`` binary with a local data folder,
and running the orchestrator, scheduler, watcher, a runner and the UI in one
task group. Nothing here is needed by the services on their own.
"""

from ._natsserver import NatsServer, free_port
from .stack import DevStack

__all__ = ["DevStack", "NatsServer", "free_port"]
