"""The client's connection: opening it, and sending a request the way the contract wants.

A request that may take effect twice without harm is re-sent while it goes
unanswered (see ``_repeatable``), and with tracing on it carries the
caller's trace context in its headers. Errors are translated in
:mod:`shared.connection`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from shared import names, telemetry
from shared.bootstrap import leader_kv
from shared.codec import encode
from shared.connection import close, connect, request
from shared.errors import StackUnavailable
from shared.messages import (
    CreateFlowRun,
    ProposeState,
)
from shared.models import FlowRun
from shared.settings import Settings

__all__ = ["_Connection"]


class _WithHeaders:
    """The connection as :func:`shared.connection.request` uses it, sending ``headers``
    (the trace context) with the request; the rest of that function (error
    translation, decoding) stays in one place."""

    def __init__(self, nc: NATS, headers: dict[str, str]) -> None:
        self._nc = nc
        self._headers = headers

    async def request(self, subject: str, payload: bytes, timeout: float) -> Any:
        return await self._nc.request(subject, payload, timeout=timeout, headers=self._headers)


def _repeatable(subject: str, payload: Any) -> bool:
    """May this request be sent twice without a second effect?"""
    if isinstance(payload, CreateFlowRun):
        return payload.idempotency_key is not None  # without a key, a copy is a second run
    if isinstance(payload, ProposeState):
        return payload.transition_id is not None  # the same id is accepted once
    # Reads, cancels, heartbeats, registering and pausing repeat harmlessly; a
    # repeated delete could answer "not found" for a delete that worked.
    return subject not in (names.DEPLOYMENT_DELETE, names.FLOWRUN_DELETE)


class _Connection:
    """What every request of :class:`~engine.client.Client` goes through."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        nc: NATS | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self._nc = nc
        self._owns_nc = nc is None
        self._connect_timeout = connect_timeout
        self._runs_kv: KeyValue | None = None
        self._runs_leader_kv: KeyValue | None = None
        self._reconnected = anyio.Event()

    async def __aenter__(self) -> Self:
        telemetry.setup("sluice-client")  # a no-op unless OTEL_TRACES_EXPORTER asks, or done
        if self._nc is None:
            self._nc = await connect(
                self.settings,
                name="sluice-client",
                wait=self._connect_timeout,
                on_reconnect=self._on_reconnect,
            )
        return self

    async def _on_reconnect(self) -> None:
        done, self._reconnected = self._reconnected, anyio.Event()
        done.set()

    @property
    def reconnected(self) -> anyio.Event:
        """Set at the next reconnect of a connection this client opened (take it
        before the wait it should interrupt): what a pull that the server
        forgot with its restart waits for, to be asked again."""
        return self._reconnected

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_nc and self._nc is not None:
            nc, self._nc = self._nc, None
            await close(nc)  # quietly, if the server is gone

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("use the client as `async with Client() as client:`")
        return self._nc

    async def _request(
        self,
        subject: str,
        payload: Any,
        reply_type: type[Any],
        *,
        trace_headers: dict[str, str] | None = None,
    ) -> Any:
        # Policy (docs/reliability.md): a request that may take effect twice
        # without harm is re-sent while unanswered (shared.connection.request),
        # so a paused orchestrator replica costs a fraction of a second.
        timeout = self.settings.request_timeout
        again = _repeatable(subject, payload)
        if trace_headers:
            traced: Any = _WithHeaders(self.nc, trace_headers)
            return await request(
                traced, subject, payload, reply_type, timeout=timeout, repeatable=again
            )
        if not telemetry.enabled():
            return await request(
                self.nc, subject, payload, reply_type, timeout=timeout, repeatable=again
            )
        data = payload if isinstance(payload, bytes) else encode(payload)
        with telemetry.request_span(subject, len(data)) as headers:
            nc: Any = _WithHeaders(self.nc, headers or {})
            reply = await request(nc, subject, data, reply_type, timeout=timeout, repeatable=again)
            if isinstance(reply, FlowRun):  # the root of a created run's trace names it
                telemetry.set_attributes({"sluice.flow_run.id": reply.id})
            return reply

    async def _kv(self) -> KeyValue:
        if self._runs_kv is None:
            try:
                self._runs_kv = await self.nc.jetstream().key_value(names.FLOW_RUNS_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                raise StackUnavailable(
                    "the flow_runs bucket does not exist; has the orchestrator ever started?"
                ) from None
            except (nats.errors.Error, TimeoutError) as exc:  # the server gone, or not ready
                raise _no_jetstream(exc) from None
        return self._runs_kv

    async def _leader_kv(self) -> KeyValue:
        """``flow_runs`` read through its stream's leader (see ``shared.bootstrap.leader_kv``)."""
        if self._runs_leader_kv is None:
            await self._kv()  # the bucket exists, or StackUnavailable says it does not
            try:
                self._runs_leader_kv = await leader_kv(self.nc.jetstream(), names.FLOW_RUNS_BUCKET)
            except (nats.errors.Error, TimeoutError) as exc:
                raise _no_jetstream(exc) from None
        return self._runs_leader_kv


def _no_jetstream(exc: Exception) -> StackUnavailable:
    if isinstance(exc, (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError)):
        return StackUnavailable(
            "JetStream is not available on this NATS server; is it starting, or "
            "running without JetStream (nats-server -js)?"
        )
    return StackUnavailable(f"JetStream did not answer ({str(exc) or type(exc).__name__})")
