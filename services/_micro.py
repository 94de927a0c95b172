"""The services as NATS micro services: ``nats micro ls/info/stats`` lists their endpoints.

nats-py's micro framework answers the discovery subjects (``$SRV.PING``,
``$SRV.INFO``, ``$SRV.STATS``) and counts the requests of each endpoint. It
times and judges a request by its handler's return; ours hand each request to
a task of the service's task group and return at once (the request server's
concurrency and backpressure stay as they are), and answer errors as coded
replies rather than by raising. So when a request is answered,
:func:`count` adds its real duration and, for an error reply, the error to the
endpoint's statistics. Those counters are private to nats-py's ``Endpoint``:
this module is the one place that touches them.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.micro
from nats.aio.client import Client as NATS

log = logging.getLogger("sluice.rpc")

VERSION = "0.1.0"


async def register(nc: NATS, name: str, description: str) -> Any:
    """Start a micro service ``name`` on ``nc`` (its discovery subjects answer from now)."""
    return await nats.micro.add_service(nc, name=name, version=VERSION, description=description)


def endpoint_name(subject: str) -> str:
    """A micro endpoint's name for ``subject`` (names allow no dots)."""
    return subject.replace(".", "-")


def last_endpoint(service: Any) -> Any:
    """The endpoint ``add_endpoint`` just added (nats-py does not return it)."""
    endpoints = getattr(service, "_endpoints", None)
    return endpoints[-1] if endpoints else None


def count(endpoint: Any, elapsed_ns: int, error: str | None) -> None:
    """Add one answered request's duration, and its error code if it failed."""
    if endpoint is None or not hasattr(endpoint, "_processing_time"):
        return  # another nats-py: its own counting stands
    endpoint._processing_time += elapsed_ns
    if endpoint._num_requests:
        endpoint._average_processing_time = int(endpoint._processing_time / endpoint._num_requests)
    if error is not None:
        endpoint._num_errors += 1
        endpoint._last_error = error
