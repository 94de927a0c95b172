"""A griffe extension: Sphinx cross-reference roles in docstrings become inline code.

The engine's docstrings name other objects the Sphinx way
(``:class:`~engine.flows.Flow```, ``:meth:`with_options```). mkdocstrings
renders Markdown, where those roles would show as literal text, so they are
rewritten before rendering: a leading ``~`` keeps only the last component, as
Sphinx does. The docstrings themselves stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def plain(text: str) -> str:
    """``text`` with every Sphinx role replaced by inline code."""

    def code(match: re.Match[str]) -> str:
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    return ROLE.sub(code, text)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
