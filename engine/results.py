"""Where the results of runs go, so that a later attempt (or another process) can read them.

When a run's runtime has a result store (always with a stack; on request
without one), every COMPLETED task run and flow run keeps its result by
these rules, applied in order:

1. **Inline** — the value encodes as JSON (msgspec) in at most
   :data:`INLINE_LIMIT` bytes: ``State.data`` is its JSON form (decoded
   again, so a tuple reads back as a list and a datetime as a string, the
   same as any reader on the wire sees it).
2. **Stored as JSON** — larger JSON-able values go to the result store as a
   ``.json`` object; ``State.details.result_ref`` names it, ``data`` is None.
3. **Stored as msgpack** — values msgspec encodes as msgpack but not as JSON
   (bytes at the top level, mappings with non-string keys, …) go to the
   store as a ``.msgpack`` object, whatever their size, so their types
   survive.
4. **Not persisted** — anything else (arbitrary objects) is not kept: the
   state is still COMPLETED, ``data`` and ``result_ref`` are empty and its
   message starts with :data:`NOT_PERSISTED`. Such a task runs again when
   its flow run is retried.

Nothing is ever pickled, and nothing read back is unpickled: stored results
are decoded by msgspec into plain JSON / msgpack types only, because a
stored result may have been written by anyone who can write to the bucket.

A *result ref* is ``"<scheme>:<name>"``: ``object:sluice_results/<name>``
for the JetStream object store :data:`shared.names.RESULTS_BUCKET`, or
``file:<name>`` for a :class:`FolderResultStore` (the folder is
``Settings.home / "results"`` by default). A name is a flat identifier
(letters, digits, ``.``, ``-``, ``_``) ending in ``.json`` or ``.msgpack``,
which says how to decode it.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Protocol

import msgspec

from engine.exceptions import MissingResult
from shared.errors import SluiceError
from shared.states import State

__all__ = [
    "INLINE_LIMIT",
    "NOT_PERSISTED",
    "FolderResultStore",
    "ResultStore",
    "StoredResult",
    "is_persisted",
    "keep_result",
    "load_result",
    "persist_result",
]

#: Largest JSON encoding kept inline in ``State.data`` (bytes).
INLINE_LIMIT = 64 * 1024
#: How the message of a COMPLETED state without a kept result begins.
NOT_PERSISTED = "result not persisted"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.(json|msgpack)$")
_json = msgspec.json.Encoder()
_msgpack = msgspec.msgpack.Encoder()
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError)


class ResultStore(Protocol):
    """Keeps encoded results by name. Implementations must be thread-safe."""

    def put(self, name: str, data: bytes) -> str:
        """Store ``data`` under ``name`` (see the module docstring) and return its ref.

        Raises SluiceError (or OSError) when the store cannot keep it.
        """
        ...

    def get(self, ref: str) -> bytes:
        """The bytes a ref names. Raises MissingResult when it is not (or no longer) there."""
        ...


class StoredResult(msgspec.Struct, frozen=True):
    """How one result was kept: what goes in ``State.data``, ``result_ref`` and ``message``."""

    data: Any = None
    ref: str | None = None
    message: str | None = None


def persist_result(value: Any, store: ResultStore, name: str) -> StoredResult:
    """Keep ``value`` by the rules of the module docstring; ``name`` without a suffix.

    Never raises for the value itself: a value that cannot be encoded, or a
    store that fails, gives a StoredResult whose message says why.
    """
    if not isinstance(value, bytes | bytearray | memoryview):
        try:
            encoded = _json.encode(value)
        except _ENCODE_ERRORS:
            pass
        else:
            if len(encoded) <= INLINE_LIMIT:
                return StoredResult(data=msgspec.json.decode(encoded))
            return _put(store, f"{name}.json", encoded)
    try:
        packed = _msgpack.encode(value)
    except _ENCODE_ERRORS as exc:
        kind = type(value).__name__
        return StoredResult(
            message=f"{NOT_PERSISTED}: a {kind} encodes neither as JSON nor as msgpack ({exc}); "
            "Sluice never pickles results. Return JSON-able data to keep it."
        )
    return _put(store, f"{name}.msgpack", packed)


def keep_result(state: State, value: Any, store: ResultStore, name: str) -> State:
    """``state`` (COMPLETED) with ``value`` kept by :func:`persist_result` under ``name``."""
    kept = persist_result(value, store, name)
    details = state.details
    if kept.ref is not None:
        details = msgspec.structs.replace(details, result_ref=kept.ref)
    return msgspec.structs.replace(
        state, data=kept.data, details=details, message=kept.message or state.message
    )


def _put(store: ResultStore, name: str, data: bytes) -> StoredResult:
    try:
        return StoredResult(ref=store.put(name, data))
    except (SluiceError, OSError, ValueError) as exc:
        return StoredResult(message=f"{NOT_PERSISTED}: the result store failed: {exc}")


def is_persisted(state: State) -> bool:
    """True for a COMPLETED state whose result can be loaded with :func:`load_result`."""
    if state.details.result_ref is not None:
        return True
    return not (state.data is None and (state.message or "").startswith(NOT_PERSISTED))


def load_result(state: State, store: ResultStore | None) -> Any:
    """The result a persisted COMPLETED state holds: its ``data``, or what its ref names.

    Raises MissingResult when the ref cannot be read (no store, gone, or
    undecodable).
    """
    ref = state.details.result_ref
    if ref is None:
        return state.data
    if store is None:
        raise MissingResult(f"result {ref} needs a result store and this run has none")
    raw = store.get(ref)
    try:
        if ref.endswith(".json"):
            return msgspec.json.decode(raw)
        if ref.endswith(".msgpack"):
            return msgspec.msgpack.decode(raw)
    except msgspec.DecodeError as exc:
        raise MissingResult(f"result {ref} cannot be decoded: {exc}") from None
    raise MissingResult(f"result ref {ref!r} names no known encoding")


def split_ref(ref: str, prefix: str) -> str:
    """The name in ``<prefix><name>`` (prefix e.g. ``file:``); raises MissingResult
    when ``ref`` has another prefix or the name is not a valid result name."""
    name = ref[len(prefix) :] if ref.startswith(prefix) else ""
    if not _NAME.match(name):
        raise MissingResult(f"{ref!r} is not a result ref of this store ({prefix}…)")
    return name


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a valid result name."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid result name")


class FolderResultStore:
    """Results as files in a folder (created on first write): the store without a stack.

    Names are checked against a strict pattern, so a ref read from anywhere
    can only name a file inside ``folder``. Writes are atomic (temporary
    file renamed into place).
    """

    scheme = "file"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def put(self, name: str, data: bytes) -> str:
        check_name(name)
        import tempfile  # only writing needs it; keeps `import engine` light

        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return f"{self.scheme}:{name}"

    def get(self, ref: str) -> bytes:
        name = split_ref(ref, f"{self.scheme}:")
        try:
            return (self.folder / name).read_bytes()
        except OSError as exc:
            raise MissingResult(f"result {ref} cannot be read: {exc}") from None
