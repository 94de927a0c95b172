"""Results in the JetStream object store ``sluice_results`` (see :mod:`engine.results`).

The store a :class:`~engine._stack.reporter.StackReporter` gives its runs. Its methods
block the calling engine thread until the object store answered (the work
runs on the reporter's event loop through ``call``), so a state never
references a result that is not stored yet. nats-py errors are translated
here: a missing object is MissingResult, anything else StackUnavailable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors

from engine.exceptions import MissingResult
from engine.results import check_name, split_ref
from shared import names
from shared.errors import StackUnavailable

__all__ = ["ObjectResultStore"]


class ObjectResultStore:
    """Results in the JetStream object store ``sluice_results`` (see :mod:`engine.results`).

    Blocking: called from engine threads, it waits for the object to be stored,
    so a state never references a result that is not there yet.
    """

    prefix = f"object:{names.RESULTS_BUCKET}/"

    def __init__(self, call: Callable[..., Any], connection: Callable[[], Any]) -> None:
        self._call = call
        self._connection = connection
        self._store: Any = None

    async def _bucket(self) -> Any:
        if self._store is None:
            js = self._connection().jetstream()
            try:
                self._store = await js.object_store(names.RESULTS_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                raise StackUnavailable(
                    f"the {names.RESULTS_BUCKET} object store does not exist; "
                    "has the orchestrator ever started?"
                ) from None
        return self._store

    def put(self, name: str, data: bytes) -> str:
        check_name(name)
        self._call(self.put_async, name, data)
        return f"{self.prefix}{name}"

    async def put_async(self, name: str, data: bytes) -> None:
        bucket = await self._bucket()
        try:
            await bucket.put(name, data)
        except (nats.errors.Error, OSError) as exc:
            raise StackUnavailable(f"storing result {name} failed: {exc!r}") from None

    def get(self, ref: str) -> bytes:
        return self._call(self.get_async, split_ref(ref, self.prefix))

    async def get_async(self, name: str) -> bytes:
        bucket = await self._bucket()
        try:
            found = await bucket.get(name)
        except nats.js.errors.NotFoundError:
            raise MissingResult(f"result {name} is not in {names.RESULTS_BUCKET}") from None
        except (nats.errors.Error, OSError) as exc:
            raise StackUnavailable(f"reading result {name} failed: {exc!r}") from None
        return bytes(found.data or b"")
