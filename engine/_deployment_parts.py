"""The parts of a deployment given in the forms users write: schedules, git sources, entrypoints.

Pure functions that :mod:`engine.deployments` (which re-exports them) and the
runner's git sources use: they turn what a user passes into what the stack
stores, and raise ValueError naming the part that is wrong. No I/O beyond
finding a flow's source file.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.models import (
    CronSchedule,
    DeploymentSchedule,
    IntervalSchedule,
    RRuleSchedule,
)
from shared.schedules import check_schedule, schedule_from_dict

if TYPE_CHECKING:
    from engine.flows import Flow

__all__ = ["build_schedules", "entrypoint_of", "parse_source"]


def build_schedules(
    *,
    interval: float | timedelta | Iterable[float | timedelta] | None = None,
    cron: str | Iterable[str] | None = None,
    rrule: str | Iterable[str] | None = None,
    schedule: Any = None,
    timezone: str = "UTC",
    anchor_date: datetime | None = None,
) -> list[DeploymentSchedule]:
    """Every way of naming a schedule, as the list a deployment stores.

    ``schedule`` takes Schedule or DeploymentSchedule values, the dict form
    (see the module docstring), or a list of them. Raises ValueError naming
    the field when one is malformed (an invalid cron, an unknown time zone …).
    """

    def many(value: Any) -> list[Any]:
        if value is None:
            return []
        if isinstance(value, str | int | float | timedelta | dict) or not isinstance(
            value, Iterable
        ):
            return [value]
        return list(value)

    out: list[DeploymentSchedule] = []
    for every in many(interval):
        seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
        out.append(
            DeploymentSchedule(
                schedule=IntervalSchedule(
                    interval=seconds, anchor_date=anchor_date, timezone=timezone
                )
            )
        )
    out += [
        DeploymentSchedule(schedule=CronSchedule(cron=c, timezone=timezone)) for c in many(cron)
    ]
    out += [
        DeploymentSchedule(schedule=RRuleSchedule(rrule=r, timezone=timezone)) for r in many(rrule)
    ]
    items = many(schedule)
    for i, item in enumerate(items):
        where = "schedule" if len(items) == 1 else f"schedule[{i}]"
        if isinstance(item, dict):
            item = schedule_from_dict(item, where)
        if isinstance(item, DeploymentSchedule):
            out.append(item)
        elif isinstance(item, IntervalSchedule | CronSchedule | RRuleSchedule):
            out.append(DeploymentSchedule(schedule=item))
        else:
            raise ValueError(
                f"{where}: expected a dict such as {{'cron': '0 * * * *'}} or a schedule, "
                f"not {type(item).__name__}"
            )
    for item in out:
        check_schedule(item.schedule, "schedule")
    return out


def parse_source(source: str) -> tuple[str, str]:
    """``git+URL@REF`` → ``(URL, REF)``; REF defaults to ``HEAD``.

    Raises ValueError for another scheme, or a URL that carries a password.
    """
    if not source.startswith("git+"):
        raise ValueError(f"a source must look like git+URL@REF, not {source!r}")
    rest = source.removeprefix("git+")
    url, ref = rest, "HEAD"
    at = rest.rfind("@")
    # An @ after the last / separates the ref (user@host comes before the path).
    if at > rest.rfind("/"):
        url, ref = rest[:at], rest[at + 1 :]
    if not url or not ref:
        raise ValueError(f"a source must look like git+URL@REF, not {source!r}")
    if urlsplit(url).password:
        raise ValueError(
            "the source URL carries a password; deployments are readable by every client, so "
            "give credentials to git on the runner instead (a credential helper, an SSH key, "
            "or GIT_ASKPASS in its environment)"
        )
    return url, ref


def entrypoint_of(flow: Flow[Any, Any], base: Path) -> str:
    """``file.py:function`` relative to ``base``, or ``module:function`` when the
    flow's file is not under ``base``."""
    fn = flow.fn
    source = inspect.getsourcefile(fn)
    name = getattr(fn, "__name__", None)
    if source is None or name is None:
        raise ValueError(f"cannot tell where flow {flow.name!r} is defined; pass entrypoint=")
    path = Path(source).resolve()
    try:
        return f"{path.relative_to(base.resolve()).as_posix()}:{name}"
    except ValueError:
        module = getattr(fn, "__module__", None)
        if module and module != "__main__":
            return f"{module}:{name}"
        return f"{path.as_posix()}:{name}"
