"""The CLI reference page, rendered from the Typer app at build time.

``mkdocs.yml`` loads this file as a hook: a page holding the marker
``<!-- sluice:cli-reference -->`` gets the marker replaced by one section per
command, with its usage, help and every argument and option, read from the
same command tree ``sluice`` runs. The page can therefore never fall behind
the code; ``tests/docs/test_reference.py`` checks that nothing is left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MARKER = "<!-- sluice:cli-reference -->"


def walk(
    command: Any, ctx: Any, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Every command under ``command`` (itself first), with a context to render it in."""
    yield path, command, ctx
    for name in getattr(command, "commands", {}):
        sub = command.commands[name]
        if sub.hidden:
            continue
        sub_ctx = sub.make_context(name, [], parent=ctx, resilient_parsing=True)
        yield from walk(sub, sub_ctx, (*path, name))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_command(path: tuple[str, ...], command: Any, ctx: Any) -> str:
    lines = [f"## `{' '.join(path)}`", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    usage = " ".join([*path, *command.collect_usage_pieces(ctx)])
    lines += ["```text", f"Usage: {usage}", "```", ""]
    rows = []
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            record = param.get_help_record(ctx)
            name = f"`{record[0] if record else param.name.upper()}`"
            helptext = (record[1] if record else param.help) or ""
            kind = "argument" + ("" if param.required else " (optional)")
        else:
            record = param.get_help_record(ctx)
            if record is None:
                continue
            name = ", ".join(f"`{part.strip()}`" for part in record[0].split(","))
            helptext = record[1]
            kind = "option" + (" (required)" if param.required else "")
        rows.append(f"| {_cell(name)} | {kind} | {_cell(helptext)} |")
    if rows:
        lines += ["| name | kind | what |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def render() -> str:
    """The whole reference as Markdown: one section per command of ``sluice``."""
    import typer.main

    from engine.cli import app

    root = typer.main.get_command(app)
    root_ctx = root.make_context("sluice", [], resilient_parsing=True)
    return "\n".join(render_command(*entry) for entry in walk(root, root_ctx, ("sluice",)))


def on_page_markdown(markdown: str, **_: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
