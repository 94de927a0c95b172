"""The generated and checked reference pages: settings, SDK and CLI.

The site is built once per module with ``mkdocs build --strict`` into a temp
folder (the same build ``just docs-build`` runs), and the pages are checked
against the code: every ``SLUICE_*`` variable, every name in
``engine.__all__``, every ``sluice`` command and option.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import engine
from shared.settings import Settings

REPO = Path(__file__).parents[2]
SETTINGS_PAGE = REPO / "docs" / "reference" / "settings.md"
# Where the code may name a variable: the packages, the deploy files, the compose file.
SOURCES = [REPO / "shared", REPO / "engine", REPO / "services", REPO / "deploy"]
VARIABLE = re.compile(r"SLUICE_[A-Z0-9_]+")


def _code_variables() -> set[str]:
    found: set[str] = set()
    files = [REPO / "docker-compose.yml"]
    for root in SOURCES:
        files += [p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".conf", "")]
    for path in files:
        text = path.read_text(errors="replace")
        # A prefix (f"SLUICE_{name}", "SLUICE_RUNNER_*") is not a variable; the
        # names Settings builds from its prefix are found through Settings below.
        found |= {m.group() for m in VARIABLE.finditer(text) if not m.group().endswith("_")}
    return found


def _settings_variables() -> dict[str, str]:
    """``SLUICE_<VAR>`` -> ``Settings`` field, read from ``Settings.from_env``'s tables."""
    tree = ast.parse((REPO / "shared" / "settings.py").read_text())
    pairs: dict[str, str] = {"SLUICE_HOME": "home"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and len(node.elts) >= 2:
            field, var = node.elts[0], node.elts[1]
            if (
                isinstance(field, ast.Constant)
                and isinstance(var, ast.Constant)
                and isinstance(field.value, str)
                and isinstance(var.value, str)
                and var.value.isupper()
            ):
                pairs[f"SLUICE_{var.value}"] = str(field.value)
    return pairs


def _documented() -> dict[str, str]:
    """Variable -> the default cell of its row on the settings page."""
    rows: dict[str, str] = {}
    for line in SETTINGS_PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and (m := re.fullmatch(r"`(SLUICE_[A-Z0-9_]+)`", cells[0])):
            rows[m.group(1)] = cells[1]
    return rows


def test_every_variable_in_the_code_is_on_the_settings_page() -> None:
    missing = (_code_variables() | set(_settings_variables())) - set(_documented())
    assert not missing, f"add these to docs/reference/settings.md: {sorted(missing)}"


def test_the_settings_page_names_no_variable_the_code_lacks() -> None:
    stale = set(_documented()) - _code_variables() - set(_settings_variables())
    assert not stale, f"docs/reference/settings.md lists unknown variables: {sorted(stale)}"


def test_the_settings_page_states_the_code_defaults() -> None:
    documented = _documented()
    defaults = Settings()
    for var, field in _settings_variables().items():
        value: Any = getattr(defaults, field)
        cell = documented[var]
        if value is None:
            assert not cell.startswith("`"), f"{var} has no default, the page says {cell}"
        elif field == "home":
            assert cell == "`~/.sluice`" and value == Path.home() / ".sluice"
        elif isinstance(value, int | float):
            assert float(cell.strip("`")) == float(value), f"{var}: page {cell}, code {value}"
        else:
            assert cell.strip("`") == str(value), f"{var}: page {cell}, code {value}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    return out


def test_every_public_sdk_name_has_a_section(site: Path) -> None:
    page = (site / "reference" / "sdk" / "index.html").read_text()
    anchors = set(re.findall(r'id="engine\.[\w.]+"', page))
    missing = [name for name in engine.__all__ if not any(a.endswith(f'.{name}"') for a in anchors)]
    assert not missing, f"docs/reference/sdk.md lacks: {missing}"


def _cli_hook() -> Any:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", REPO / "docs" / "_hooks" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_command_and_option_is_in_the_cli_reference(site: Path) -> None:
    import typer.main

    from engine.cli import app

    page = html.unescape((site / "reference" / "cli" / "index.html").read_text())
    root = typer.main.get_command(app)
    ctx = root.make_context("sluice", [], resilient_parsing=True)
    commands = list(_cli_hook().walk(root, ctx, ("sluice",)))
    assert len(commands) > 10
    for path, command, cmd_ctx in commands:
        title = " ".join(path)
        assert f"><code>{title}</code><a" in page, f"no section for {title}"
        for param in command.get_params(cmd_ctx):
            if getattr(param, "hidden", False):
                continue
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert opt in page, f"{title}: option {opt} missing"


def test_the_readme_is_a_short_front_door_whose_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local, "the README links into the docs"
    missing = [t for t in local if not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"
    # The two commands CI and newcomers rely on, unchanged.
    assert ".venv/bin/pip install -e . && .venv/bin/sluice dev" in readme
    assert ".venv/bin/pip install -e '.[dev]' && .venv/bin/just check" in readme


def test_the_settings_page_states_the_program_defaults() -> None:
    from engine.runner._runner import DEFAULT_LIMIT
    from services.ui.service import DEFAULT_HOST, DEFAULT_PORT

    documented = _documented()
    assert documented["SLUICE_UI_HOST"] == f"`{DEFAULT_HOST}`"
    assert documented["SLUICE_UI_PORT"] == f"`{DEFAULT_PORT}`"
    assert documented["SLUICE_RUNNER_LIMIT"] == f"`{DEFAULT_LIMIT}`"
