"""Serving request/reply subjects: concurrency, backpressure and the error boundary.

A :class:`RequestServer` subscribes handlers to subjects (in a queue group, so
replicas share the load) and runs each request as its own task, at most
``concurrency`` at a time; when all slots are busy it stops reading, and NATS
buffers. Whatever a handler raises becomes a coded error reply: a
:class:`SluiceError` as itself, anything else as ``internal`` (logged with its
traceback). No request goes unanswered and no request can stop the service.

With tracing on (:mod:`shared.telemetry`), each request is handled inside
one server span, child of the trace context its headers carry, so whatever
the handler publishes or asks joins the caller's trace.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import nats.errors
from anyio.abc import TaskGroup
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services import _micro
from shared import telemetry
from shared.codec import encode, encode_error
from shared.errors import InternalError, SluiceError, StackUnavailable
from shared.messages import Decision

log = logging.getLogger("sluice.rpc")

Handler = Callable[[Msg], Awaitable[Any]]
#: Outcomes of a proposal that are answers, not errors.
_DECISIONS = frozenset(d.value for d in Decision)


class RequestServer:
    def __init__(
        self,
        nc: NATS,
        tg: TaskGroup,
        *,
        queue: str,
        concurrency: int = 256,
        micro: tuple[str, str] | None = None,
    ) -> None:
        """``micro`` = (service name, description): serve the subjects as the endpoints
        of a NATS micro service of that name (see :mod:`services._micro`)."""
        self._micro_spec = micro
        self._micro: Any = None
        self._endpoints: dict[str, Any] = {}
        self._nc = nc
        self._tg = tg
        self._queue = queue
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._subs: list[Subscription] = []
        self._idle: anyio.Event | None = None  # made by stop(), set once no request runs

    async def add(self, subject: str, handler: Handler) -> None:
        """Subscribe ``handler`` to ``subject``; returns once the server has the
        subscription (a flush: nats-py sends SUB lazily, and a request sent the
        moment a service says it is ready would otherwise find no responders)."""

        async def on_message(msg: Msg) -> None:
            token = object()
            try:
                # Without a checkpoint while slots are free: that would cost every
                # request a trip round the event loop.
                self._limiter.acquire_on_behalf_of_nowait(token)
            except anyio.WouldBlock:
                await self._limiter.acquire_on_behalf_of(token)  # full: stop reading
            self._tg.start_soon(self._run, handler, msg, token)

        if self._micro_spec is not None:
            if self._micro is None:
                self._micro = await _micro.register(self._nc, *self._micro_spec)

            async def on_request(request: Any) -> None:
                await on_message(request._msg)  # the Msg itself: replies go as before

            await self._micro.add_endpoint(
                name=_micro.endpoint_name(subject),
                subject=subject,
                queue_group=self._queue,
                handler=on_request,
            )
            self._endpoints[subject] = _micro.last_endpoint(self._micro)
        else:
            sub = await self._nc.subscribe(
                subject,
                queue=self._queue,
                cb=on_message,
                pending_msgs_limit=100_000,
                pending_bytes_limit=256 * 1024 * 1024,
            )
            self._subs.append(sub)
        await self._nc.flush()

    async def _run(self, handler: Handler, msg: Msg, token: object) -> None:
        started = time.perf_counter_ns()
        try:
            if telemetry.enabled():
                with telemetry.server_span(
                    msg.subject, msg.headers, queue=self._queue, body_size=len(msg.data)
                ):
                    decision = await self._answer(handler, msg)
            else:
                decision = await self._answer(handler, msg)
            elapsed = time.perf_counter_ns() - started
            if telemetry.metrics_enabled():
                telemetry.record_request(msg.subject, decision, elapsed / 1e9)
            if self._endpoints:
                failed = decision != "ok" and decision not in _DECISIONS
                _micro.count(
                    self._endpoints.get(msg.subject), elapsed, decision if failed else None
                )
        finally:
            self._limiter.release_on_behalf_of(token)
            if self._idle is not None and not self._limiter.borrowed_tokens:
                self._idle.set()

    async def _answer(self, handler: Handler, msg: Msg) -> str:
        """Run ``handler`` and reply with its value or its coded error; returns the
        outcome for metrics: the reply's decision (a proposal), ``ok``, or the error code."""
        decision = "ok"
        try:
            value = await handler(msg)
            reply = encode(value)
            status = getattr(value, "status", None)
            if isinstance(status, enum.Enum):
                decision = str(status.value)
        except SluiceError as exc:
            reply = encode_error(exc)
            decision = exc.code
            telemetry.set_error(exc.code, exc.message)
        except (nats.errors.Error, TimeoutError) as exc:
            # The one boundary where NATS trouble becomes a coded error.
            log.warning("request on %s: NATS error %r", msg.subject, exc)
            telemetry.set_error(StackUnavailable.code, repr(exc))
            reply = encode_error(StackUnavailable(_unavailable_message(exc)))
            decision = StackUnavailable.code
        except Exception as exc:
            log.exception("request on %s failed", msg.subject)
            telemetry.set_error("internal", f"{type(exc).__name__}: {exc}")
            reply = encode_error(InternalError(f"internal error: {type(exc).__name__}: {exc}"))
            decision = InternalError.code
        if msg.reply:
            try:
                await self._nc.publish(msg.reply, reply)
            except Exception as exc:  # the connection is gone; the client will time out
                log.warning("could not reply on %s: %s", msg.subject, exc)
        return decision

    async def stop(self, grace: float) -> None:
        """Stop taking requests, then wait up to ``grace`` seconds for in-flight ones."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:
                log.debug("unsubscribe failed: %s", exc)
        self._subs.clear()
        if self._micro is not None:
            try:
                await self._micro.stop()
            except Exception as exc:
                log.debug("stopping the micro service failed: %s", exc)
            self._micro = None
        if self._limiter.borrowed_tokens:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle.wait()
        if self._limiter.borrowed_tokens:
            log.warning(
                "shutdown: %d requests still running after %.1fs; cancelling them",
                self._limiter.borrowed_tokens,
                grace,
            )


def _unavailable_message(exc: Exception) -> str:
    """What to tell a client whose request met NATS trouble; the server's own
    description when JetStream gave one (a full disk says so)."""
    description = getattr(exc, "description", None)
    detail = f"{type(exc).__name__}: {description}" if description else type(exc).__name__
    if description and "insufficient resources" in description.lower():
        return (
            f"the state store is out of space ({detail}); nothing was stored — free "
            "JetStream storage (or raise max_file_store), then retry with the same "
            "idempotency key"
        )
    return f"the state store did not answer ({detail}); retry (with the same idempotency key)"
