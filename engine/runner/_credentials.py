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

__all__ = ["CREDENTIAL_VARIABLES", "FLOW_PREFIX", "flow_process_env"]

#: What a NATS identity is made of, as SLUICE_NATS_<name>.
CREDENTIAL_VARIABLES = ("USER", "PASSWORD", "TOKEN", "CREDS", "INBOX_PREFIX")
#: Prefix of the runner settings that name the flow credentials.
FLOW_PREFIX = "SLUICE_FLOW_NATS_"


def _secret(key: str) -> bool:
    if key.startswith(FLOW_PREFIX):
        return True
    if key.startswith("SLUICE_NATS_") and key[len("SLUICE_NATS_") :] in CREDENTIAL_VARIABLES:
        return True
    return key.startswith("SLUICE_") and key.endswith("_PASSWORD")


def flow_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` (a runner's, with the run's added) as a relayed flow-run process gets it."""
    out = {k: v for k, v in env.items() if not _secret(k)}
    for name in CREDENTIAL_VARIABLES:
        value = env.get(f"{FLOW_PREFIX}{name}")
        if value:
            out[f"SLUICE_NATS_{name}"] = value
    return out
