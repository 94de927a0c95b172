"""Finding a flow in user code: entrypoints, files and modules.

An entrypoint is ``path/to/file.py:function`` or ``package.module:function``.
A relative file path is resolved against a base folder (a deployment's
``path``), or — when the file is not there — against the working directory
(a runner serving the code from its own folder starts the process there);
the file's own folder goes first on ``sys.path`` so it can import its
neighbours. A module is imported with the base folder first on
``sys.path``. The part after ``:`` names a module attribute, or — for
``sluice run`` — a flow by its ``name``.

Every failure is an :class:`~engine.exceptions.EntrypointError` whose message
says what to fix (the exception an import raised is quoted); importing user
code runs it, so anything it raises counts as such a failure.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.exceptions import EntrypointError
from engine.flows import Flow
from engine.states import describe_exception

__all__ = ["flows_in", "import_file", "import_module", "load_entrypoint", "pick_flow"]

_IDENT = re.compile(r"^[A-Za-z_][\w-]*$")


def split_target(text: str) -> tuple[str, str | None]:
    """``"a/b.py:flow"`` -> ``("a/b.py", "flow")``; no (valid) ``:NAME`` -> ``(text, None)``."""
    where, sep, name = text.rpartition(":")
    if sep and where and _IDENT.match(name):
        return where, name
    return text, None


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _locate(path: str | Path, base: str | Path | None) -> Path:
    """The file ``path`` names: absolute, else under ``base``, else under the working
    directory (where a runner that serves the code from its own folder starts us)."""
    file = Path(path)
    if file.is_absolute():
        return file
    folders = [Path(base)] if base is not None else []
    folders.append(Path.cwd())
    for folder in folders:
        if (folder / file).is_file():
            return folder / file
    return folders[0] / file


def import_file(path: str | Path, base: str | Path | None = None) -> ModuleType:
    """Import a Python file as a module. Raises EntrypointError."""
    file = _locate(path, base).resolve()
    if not file.is_file():
        raise EntrypointError(f"no such flow file: {file}")
    # A stable module name per file, so task identities (cache keys) match
    # across processes that load the same file.
    digest = hashlib.sha256(str(file).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", file.stem)
    name = f"sluice_flows_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise EntrypointError(f"{file} cannot be imported as Python code")
    module = importlib.util.module_from_spec(spec)
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        if not isinstance(exc, Exception | SystemExit):
            raise  # KeyboardInterrupt and the like are not the file's fault
        raise EntrypointError(f"importing {file} failed: {describe_exception(exc)}") from exc
    return module


def import_module(module_name: str, base: str | Path | None = None) -> ModuleType:
    """Import ``package.module`` (``base`` first on sys.path). Raises EntrypointError."""
    if base is not None and str(Path(base).resolve()) not in sys.path:
        sys.path.insert(0, str(Path(base).resolve()))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise EntrypointError(f"no module named {module_name!r}") from exc
        raise EntrypointError(f"importing {module_name} failed: {describe_exception(exc)}") from exc
    except (Exception, SystemExit) as exc:
        raise EntrypointError(f"importing {module_name} failed: {describe_exception(exc)}") from exc


def flows_in(module: ModuleType) -> dict[str, Flow[..., Any]]:
    """The flows a module defines or imports, by variable name (each flow once)."""
    found: dict[str, Flow[..., Any]] = {}
    seen: set[int] = set()
    for var, value in vars(module).items():
        if isinstance(value, Flow) and id(value) not in seen:
            seen.add(id(value))
            found[var] = value
    return found


def _listing(flows: dict[str, Flow[..., Any]]) -> str:
    return ", ".join(f"{var} ({f.name!r})" for var, f in flows.items()) or "none"


def pick_flow(module: ModuleType, wanted: str | None, where: str) -> Flow[..., Any]:
    """The flow named ``wanted`` (a variable or a flow name), or the only flow.

    Raises EntrypointError listing the flows when the choice is not clear.
    """
    flows = flows_in(module)
    if wanted is None:
        if len(flows) == 1:
            return next(iter(flows.values()))
        if not flows:
            raise EntrypointError(f"{where} defines no flow (a function decorated with @flow)")
        raise EntrypointError(
            f"{where} defines several flows; pick one with {where}:FLOW. Flows: {_listing(flows)}"
        )
    if wanted in flows:
        return flows[wanted]
    by_name = [f for f in flows.values() if f.name == wanted]
    if len(by_name) == 1:
        return by_name[0]
    raise EntrypointError(f"{where} has no flow {wanted!r}. Flows: {_listing(flows)}")


def load_entrypoint(entrypoint: str, base: str | Path | None = None) -> Flow[..., Any]:
    """The flow an entrypoint names (``where:attribute``). Raises EntrypointError."""
    where, attribute = split_target(entrypoint)
    if attribute is None:
        raise EntrypointError(
            f"entrypoint {entrypoint!r} names no function; "
            "use path/to/file.py:function or package.module:function"
        )
    module = import_file(where, base) if _is_file(where) else import_module(where, base)
    value = getattr(module, attribute, None)
    if value is None:
        raise EntrypointError(
            f"{where} has no attribute {attribute!r}. Flows: {_listing(flows_in(module))}"
        )
    if not isinstance(value, Flow):
        raise EntrypointError(
            f"{entrypoint} is a {type(value).__name__}, not a flow; decorate it with @flow"
        )
    return value


def load_target(target: str, *, module: bool) -> Flow[..., Any]:
    """``sluice run --path FILE[:FLOW]`` / ``--module MODULE[:FLOW]``. Raises EntrypointError."""
    where, wanted = split_target(target)
    loaded = import_module(where, Path.cwd()) if module else import_file(where)
    return pick_flow(loaded, wanted, where)
