"""What the clients of a fault test did: every operation, invoked and how it ended.

An operation ends ``ok`` (the stack answered with a result), ``failed`` (it
answered with a coded refusal: nothing happened) or ``unknown`` (no answer:
the request may or may not have taken effect, so the checker may neither
count it as done nor as not done). Only ``ok`` creates are promises the
stack must keep.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from shared.errors import SluiceError, StackUnavailable

T = TypeVar("T")
Outcome = Literal["ok", "failed", "unknown"]


@dataclass
class Op:
    kind: str
    """``create``, ``propose`` or ``cancel``."""
    key: str | None
    """The idempotency key (create) or transition id (propose) the client reuses on retry."""
    invoked: float
    completed: float | None = None
    outcome: Outcome | None = None
    run_id: str | None = None
    detail: str = ""


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    async def call(
        self,
        kind: str,
        key: str | None,
        fn: Callable[[], Awaitable[T]],
        run_id_of: Callable[[T], str | None] = lambda _: None,
    ) -> T:
        """Run one client operation and record it; re-raises what it raised."""
        op = Op(kind=kind, key=key, invoked=time.monotonic())
        self.ops.append(op)
        try:
            result = await fn()
        except StackUnavailable as exc:
            op.outcome, op.detail = "unknown", exc.message
            raise
        except SluiceError as exc:
            op.outcome, op.detail = "failed", f"{exc.code}: {exc.message}"
            raise
        except BaseException as exc:  # cancelled or broken: we do not know
            op.outcome, op.detail = "unknown", repr(exc)
            raise
        finally:
            op.completed = time.monotonic()
        op.outcome = "ok"
        op.run_id = run_id_of(result)
        return result

    def of(self, kind: str, outcome: Outcome | None = None) -> list[Op]:
        return [o for o in self.ops if o.kind == kind and (outcome is None or o.outcome == outcome)]

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op in self.ops:
            name = f"{op.kind}:{op.outcome}"
            out[name] = out.get(name, 0) + 1
        return out
