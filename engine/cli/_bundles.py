"""``sluice bundle ls|gc``: the deployment bundles in the stack's object store.

A bundle is referenced by every stored deployment version whose ``bundle``
names its digest. ``gc`` removes the others; a run already started keeps
its runner's unpacked copy, and a later run of a removed bundle's deployment
crashes saying the bundle is gone (register the deployment again).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from engine._stack.bundles import delete_bundle, list_bundles
from engine.client import Client

from . import _render
from ._invoke import with_client

__all__ = ["bundles"]

bundles = typer.Typer(
    name="bundle",
    help="List deployment bundles, and remove those no deployment references.",
    no_args_is_help=True,
)


async def _references(client: Client) -> dict[str, list[str]]:
    """digest -> the deployment versions (``name@version``) that name it."""
    refs: dict[str, list[str]] = {}
    offset: int | None = 0
    while offset is not None:
        page = await client.list_deployments(limit=1000, offset=offset, all_versions=True)
        for d in page.deployments:
            if d.bundle is not None:
                refs.setdefault(d.bundle.digest, []).append(f"{d.full_name}@{d.version or '-'}")
        offset = page.next_offset
    return refs


@bundles.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List stored bundles with their size and the deployments that reference them."""

    async def command(client: Client) -> None:
        stored = await list_bundles(client.nc.jetstream())
        refs = await _references(client)
        if as_json:
            _render.print_json(
                [{"digest": d, "size": size, "deployments": refs.get(d, [])} for d, size in stored]
            )
            return
        if not stored:
            _render.out().print("No bundles are stored.")
            return
        for digest, size in stored:
            used = ", ".join(refs.get(digest, [])) or "[dim]unreferenced[/]"
            _render.out().print(f"{digest}  {_render.size_text(size):>10}  {used}", soft_wrap=True)

    with_client(command)


@bundles.command("gc")
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Remove every bundle that no stored deployment version references."""

    async def command(client: Client) -> None:
        js = client.nc.jetstream()
        refs = await _references(client)
        unused = [(d, size) for d, size in await list_bundles(js) if d not in refs]
        for digest, size in unused:
            if not dry_run:
                await delete_bundle(js, digest)
            verb = "Would remove" if dry_run else "Removed"
            _render.out().print(
                f"{verb} {escape(digest)} ({_render.size_text(size)})", soft_wrap=True
            )
        freed = _render.size_text(sum(size for _, size in unused))
        _render.out().print(
            f"{len(unused)} unreferenced bundle{'s' if len(unused) != 1 else ''}, {freed}."
        )

    with_client(command)
