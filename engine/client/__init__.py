"""The async client for a running Sluice stack (:class:`Client`).

Owns every request a program makes of the stack through the public contract
(``_client``: runs and runners; ``_deployments``; ``_connection``: opening the
connection and sending requests) and following a run's states and logs from
JetStream (``_streams``). May import only :mod:`shared` and the engine's base modules;
:mod:`engine.sync` is its blocking facade.
"""

from engine.client._client import Client

__all__ = ["Client"]
