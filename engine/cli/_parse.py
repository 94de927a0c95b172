"""Parsing what users type: ``--param k=v``, ``--params JSON``, durations, times, ids.

Pure functions, no I/O. Each raises :class:`ValueError` with a message meant
for the person at the keyboard; the commands turn it into a usage error
(exit status 2) that names the option.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "parse_deployment_id",
    "parse_duration",
    "parse_param",
    "parse_params_object",
    "parse_run_id",
    "parse_start_at",
]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_params_object(text: str) -> dict[str, Any]:
    """``--params``: a JSON object."""
    try:
        given = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(given, dict):
        raise ValueError(f"must be a JSON object, not {type(given).__name__}")
    return given


def parse_param(pair: str) -> tuple[str, Any]:
    """``--param KEY=VALUE``: VALUE is JSON when it parses, else the text itself.

    So ``n=3`` gives the number 3, ``flag=true`` a boolean, and ``day=2026-11-20``
    or ``who=world`` a string.
    """
    key, sep, raw = pair.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{pair!r} is not KEY=VALUE")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def parse_duration(text: str) -> timedelta:
    """``30s``, ``5m``, ``2h``, ``1d``, ``1w``, combinations such as ``1h30m``, or seconds."""
    compact = text.strip().lower().replace(" ", "")
    seconds: float
    try:
        seconds = float(compact)
    except ValueError:
        if not _DURATION.fullmatch(compact):
            raise ValueError(
                f"{text!r} is not a duration; use e.g. 30s, 5m, 2h, 1d, 1h30m or plain seconds"
            ) from None
        seconds = sum(
            float(amount) * _UNIT_SECONDS[unit] for amount, unit in _DURATION_PART.findall(compact)
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a duration of zero or more seconds")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def parse_start_at(text: str) -> datetime:
    """An ISO 8601 instant; one without a zone is taken as UTC. Returned in UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 time; use e.g. 2026-11-20T08:00:00Z "
            "(a time without an offset is UTC)"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _uuid(text: str, what: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not a {what} id (a UUID)") from None


def parse_run_id(text: str) -> str:
    """A flow-run id in its canonical form (lower case, with hyphens)."""
    return _uuid(text, "flow run")


def parse_deployment_id(text: str) -> str:
    return _uuid(text, "deployment")
