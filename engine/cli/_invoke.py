"""Running one async command against the stack, and the CLI's error boundary.

:func:`with_client` reads the settings, connects with a short timeout, runs
the command on a fresh event loop (``anyio.run``) and turns what can go wrong
into an exit status: a :class:`SluiceError` prints ``error: <message>`` and
exits 1, Ctrl-C exits 130. No traceback reaches the user for either; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import anyio
import typer

from engine.client import Client
from shared.errors import SluiceError
from shared.settings import Settings

from . import _render

__all__ = ["CONNECT_TIMEOUT", "EXIT_FAILURE", "EXIT_INTERRUPTED", "fail", "with_client"]

T = TypeVar("T")

#: Seconds to wait for NATS; a CLI command should say "not running" quickly.
CONNECT_TIMEOUT = 3.0
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def fail(exc: SluiceError) -> NoReturn:
    _render.print_error(exc)
    raise typer.Exit(EXIT_FAILURE)


def _sluice_errors(group: BaseExceptionGroup[BaseException]) -> list[SluiceError] | None:
    """Every leaf of ``group`` when all are SluiceErrors, else None (a bug: re-raise)."""
    leaves: list[SluiceError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            nested = _sluice_errors(exc)
            if nested is None:
                return None
            leaves.extend(nested)
        elif isinstance(exc, SluiceError):
            leaves.append(exc)
        else:
            return None
    return leaves


def with_client(command: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``command(client)`` with a connected client; return what it returns.

    Raises ``typer.Exit`` with status 1 after printing the error(s) when the
    command (or one of its tasks) raised SluiceError, and with 130 on Ctrl-C.
    """
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        fail(SluiceError(str(exc)))

    async def main() -> T:
        async with Client(settings, connect_timeout=CONNECT_TIMEOUT) as client:
            return await command(client)

    try:
        return anyio.run(main)
    except SluiceError as exc:
        fail(exc)
    except BaseExceptionGroup as group:
        errors = _sluice_errors(group)
        if errors is None:
            raise
        for error in errors:
            _render.print_error(error)
        raise typer.Exit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        _render.err().print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
