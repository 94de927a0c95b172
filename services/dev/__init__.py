"""The embedded stack: a private nats-server plus every service, in one process."""

from ._natsserver import NatsServer, free_port
from .stack import DevStack

__all__ = ["DevStack", "NatsServer", "free_port"]
