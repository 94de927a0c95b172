"""The Jinja environment of the pages: templates shipped in this package, filters."""

from __future__ import annotations

from pathlib import Path

import jinja2

from . import _format

__all__ = ["HERE", "environment"]

HERE = Path(__file__).resolve().parent


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails its test
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=_format.when,
        local=_format.when_html,
        clock=_format.clock,
        ago=_format.ago,
        duration=_format.duration,
        state_class=_format.state_class,
        pretty_json=_format.pretty_json,
        schedule=_format.describe_schedule,
        seconds=_format.human_seconds,
    )
    return env
