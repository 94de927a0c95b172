"""Turning what users type into what the stack knows: run references, state names,
and the shell-completion candidates for deployment and state names.

A run is named by its full id, a unique prefix of its id, or its name. Only a
full id avoids a look-up; the other two are found with ``flowrun.list``
(``id_prefix`` and ``name``), and more than one match is an error that lists
them, so a command never acts on a run the user did not mean.
"""

from __future__ import annotations

import re
import uuid

import anyio

from engine.client import Client
from shared.errors import AmbiguousName, FlowRunNotFound, InvalidParameters
from shared.models import FlowRun
from shared.settings import Settings
from shared.states import (
    AWAITING_RETRY,
    CACHED,
    DEFAULT_NAMES,
    LATE,
    RETRYING,
    StateType,
)

__all__ = [
    "STATE_CHOICES",
    "check_states",
    "complete_deployment",
    "complete_state",
    "resolve_run",
]

#: What ``--state`` accepts: each state type, and the names runs are given.
STATE_CHOICES: tuple[str, ...] = (
    *(t.value for t in StateType),
    *DEFAULT_NAMES.values(),
    LATE,
    AWAITING_RETRY,
    RETRYING,
    CACHED,
)
_BY_LOWER = {choice.lower(): choice for choice in STATE_CHOICES}
#: Matches shown when a reference is ambiguous.
_SHOWN = 10
_ID_PREFIX = re.compile(r"[0-9a-fA-F-]{1,36}")
#: Seconds a completion waits for the stack before offering nothing.
_COMPLETION_TIMEOUT = 1.5


def check_states(given: list[str]) -> list[str]:
    """The states as the stack spells them; raises InvalidParameters naming the
    valid ones when a state is unknown (case does not matter)."""
    out = []
    for state in given:
        known = _BY_LOWER.get(state.strip().lower())
        if known is None:
            raise InvalidParameters(
                f"unknown state {state!r}; valid states: {', '.join(STATE_CHOICES)}"
            )
        out.append(known)
    return out


def _describe(run: FlowRun) -> str:
    target = run.deployment_name or run.flow_name
    return f"{run.id}  {run.name}  {target}  {run.state.describe()}"


async def resolve_run(client: Client, text: str) -> str:
    """The id of the one run ``text`` names: a full id, a unique id prefix, or a name.

    Raises FlowRunNotFound when nothing matches and AmbiguousName (listing the
    matches in ``details["choices"]``) when more than one does.
    """
    given = text.strip()
    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    if not given:
        raise FlowRunNotFound("give a flow run's id, a prefix of its id, or its name")
    found: dict[str, FlowRun] = {}
    if _ID_PREFIX.fullmatch(given):
        page = await client.list_flow_runs(id_prefix=given.lower(), limit=_SHOWN + 1)
        found.update((run.id, run) for run in page.flow_runs)
    page = await client.list_flow_runs(name=given, limit=_SHOWN + 1)
    found.update((run.id, run) for run in page.flow_runs)
    if not found:
        raise FlowRunNotFound(f"no flow run has the id, id prefix or name {given!r}")
    if len(found) == 1:
        return next(iter(found))
    runs = sorted(found.values(), key=lambda r: r.expected_start_time, reverse=True)
    more = " (and more)" if len(found) > _SHOWN else ""
    raise AmbiguousName(
        f"{given!r} matches {len(found)}{more} flow runs; give more of the id",
        details={"choices": [_describe(run) for run in runs[:_SHOWN]]},
    )


# --- shell completion ------------------------------------------------------------------
def complete_state(incomplete: str) -> list[str]:
    return [s for s in STATE_CHOICES if s.lower().startswith(incomplete.lower())]


def complete_deployment(incomplete: str) -> list[str]:
    """Deployment names starting with ``incomplete``; nothing when no stack answers
    quickly (completion must never hang or print an error)."""

    async def names() -> list[str]:
        settings = Settings.from_env()
        with anyio.move_on_after(_COMPLETION_TIMEOUT * 2):
            async with Client(settings, connect_timeout=_COMPLETION_TIMEOUT) as client:
                page = await client.list_deployments(limit=1000)
                return [d.full_name for d in page.deployments]
        return []

    try:
        every = anyio.run(names)
    except Exception:  # no stack, bad settings: offer nothing rather than fail
        return []
    return sorted(n for n in every if n.startswith(incomplete))
