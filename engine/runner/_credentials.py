"""The NATS credentials a flow-run process gets: the flow credentials, never the runner's.

A process a runner starts on this host reports through the runner's relay
(:mod:`engine.runner._relay`) and needs no NATS credentials for that. Its
flow's code may still call the client (``create_flow_run``,
``wait_for_flow_run``, :class:`~engine.client.Client`): for that it gets the
credentials the runner was given for flows, ``SLUICE_FLOW_NATS_USER`` /
``_PASSWORD`` / ``_TOKEN`` / ``_CREDS``, as its ``SLUICE_NATS_*``; a
deployment should make those a client-role user (deploy/nats/auth.conf).
Without them the process has no credentials at all (fine on a server
without authorization). The runner's own ``SLUICE_NATS_*`` credentials and
every ``SLUICE_*_PASSWORD`` in its environment are left out, so the flow's
code cannot act as the runner.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["FLOW_CREDENTIALS", "flow_process_env"]

#: The runner settings naming the flow credentials, and what the process gets each as.
FLOW_CREDENTIALS = {
    "SLUICE_FLOW_NATS_USER": "SLUICE_NATS_USER",
    "SLUICE_FLOW_NATS_PASSWORD": "SLUICE_NATS_PASSWORD",
    "SLUICE_FLOW_NATS_TOKEN": "SLUICE_NATS_TOKEN",
    "SLUICE_FLOW_NATS_CREDS": "SLUICE_NATS_CREDS",
    "SLUICE_FLOW_NATS_INBOX_PREFIX": "SLUICE_NATS_INBOX_PREFIX",
}


def _secret(key: str) -> bool:
    """A credential of the runner's (or the flow credentials under their runner names)."""
    if key in FLOW_CREDENTIALS or key in FLOW_CREDENTIALS.values():
        return True
    return key.startswith("SLUICE_") and key.endswith("_PASSWORD")


def flow_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` (a runner's, with the run's added) as a relayed flow-run process gets it."""
    out = {k: v for k, v in env.items() if not _secret(k)}
    for flow_name, process_name in FLOW_CREDENTIALS.items():
        if value := env.get(flow_name):
            out[process_name] = value
    return out
