"""The ``sluice`` command line: a Typer app over :class:`engine.client.Client`.

Owns argument parsing, human output (rich) and machine output (``--json``,
one JSON document from :func:`shared.codec.encode`), and the mapping of
:class:`shared.errors.SluiceError` to ``error: <message>`` and exit status 1
(usage errors exit 2). It must not import ``services``: ``sluice dev`` runs
the embedded stack as a new program instead.
"""

from ._app import app, main

__all__ = ["app", "main"]
