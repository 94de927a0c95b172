"""Connecting to NATS, and the client-side boundary for NATS exceptions.

:func:`connect` gives every process the same supervised connection: unlimited
reconnects, a short ping interval so a dead server is noticed in seconds, and
credentials/TLS from :class:`Settings`. :func:`request` is where nats-py
exceptions become :class:`StackUnavailable` for callers.
"""

from __future__ import annotations

import inspect
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import nats
import nats.errors
from nats.aio.client import Client as NATS

from .codec import decode_reply, encode
from .errors import StackUnavailable
from .settings import Settings
from .starting import StartAbandoned, stop_requested

log = logging.getLogger("sluice.nats")

T = TypeVar("T")

DEFAULT_INBOX = "_INBOX"
PING_INTERVAL = 5  # seconds; two missed pings mark the connection dead
RECONNECT_WAIT = 0.5
#: The longest wait between two reconnect attempts: a process whose stack is
#: gone keeps trying, and logs one line per try, without flooding its log.
RECONNECT_MAX_WAIT = 5.0


#: nats-py 2.15 added the hook that lets a client choose its reconnect wait.
_HAS_RECONNECT_HOOK = "reconnect_to_server_handler" in inspect.signature(NATS.connect).parameters


def reconnect_delay(failed: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before the next reconnect attempt after ``failed`` failed ones.

    Doubles from RECONNECT_WAIT up to RECONNECT_MAX_WAIT, with ±20 % jitter so
    many clients of one restarted server do not knock at the same instant.
    """
    base = min(RECONNECT_MAX_WAIT, RECONNECT_WAIT * 2 ** min(failed, 16))
    return base * (rng or random).uniform(0.8, 1.2)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    servers = _servers(settings)
    if not (settings.tls_ca or settings.tls_cert or any(s.startswith("tls://") for s in servers)):
        return None
    ctx = ssl.create_default_context(cafile=settings.tls_ca)
    if settings.tls_cert:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


def _servers(settings: Settings) -> list[str]:
    return [u.strip() for u in settings.nats_url.split(",") if u.strip()]


def inbox_prefix(settings: Settings) -> str:
    """Where replies to this connection arrive.

    With a user name, ``_INBOX.<user>``: a server that lets each user
    subscribe only to ``_INBOX.<user>.>`` (deploy/nats/auth.conf) keeps one
    role from reading the replies sent to another, and a server that allows
    ``_INBOX.>`` sees no difference.
    """
    if settings.nats_inbox_prefix:
        return settings.nats_inbox_prefix
    user = settings.nats_user
    if user and all(c not in user for c in ".*> \t"):
        return f"{DEFAULT_INBOX}.{user}"
    return DEFAULT_INBOX


async def _connect_unless_abandoned(nc: NATS, options: dict[str, Any]) -> None:
    stop = stop_requested()
    if stop is None:
        await nc.connect(**options)
        return
    abandoned = False
    async with anyio.create_task_group() as race:

        async def until_stop() -> None:
            nonlocal abandoned
            await stop.wait()
            abandoned = True
            race.cancel_scope.cancel()

        race.start_soon(until_stop)
        await nc.connect(**options)
        race.cancel_scope.cancel()
    if abandoned and not nc.is_connected:
        raise StartAbandoned("stopped while waiting for NATS")


async def connect(
    settings: Settings,
    *,
    name: str,
    wait: float | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NATS:
    """Open a supervised NATS connection.

    With ``wait=None`` the call waits for the server as long as it takes (what
    a service wants while its NATS container starts). With a number it gives up
    after that many seconds and raises :class:`StackUnavailable` (what a CLI
    command wants). Cancellation abandons the attempt and closes the socket.
    ``on_reconnect`` runs after every re-established connection: the place to
    rebuild consumers and watchers, which can go quiet across a reconnect.
    """

    connected = False
    refused: list[str] = []  # why the server turned the last attempt away, if it did
    waiting = _WaitingLog(settings.nats_url, name) if wait is None else None

    async def on_error(exc: Exception) -> None:
        # Before the first connection every refused attempt lands here; the
        # caller hears about that once (StackUnavailable), not once per try.
        # A permissions violation is a deployment mistake (a role lacks a
        # subject): always worth a line, or a refused request only times out.
        text = str(exc) or type(exc).__name__
        denied = "permissions violation" in text.lower()
        if waiting is not None and not connected and not denied:
            waiting.failed(text)  # a service waiting for its server: say so, now and then
            return
        level = logging.WARNING if connected or denied else logging.DEBUG
        if connected and nc.is_reconnecting and isinstance(exc, OSError | TimeoutError):
            level = logging.DEBUG  # a failed attempt: choose_server already said so
        log.log(level, "nats (%s): %s", name, text)
        if not connected and "authorization" in text.lower():
            refused[:] = [text]

    async def on_disconnect() -> None:
        if not nc.is_closed:
            log.warning("nats (%s): disconnected; reconnecting", name)

    async def on_reconnected() -> None:
        log.info("nats (%s): reconnected", name)
        if on_reconnect is not None:
            await on_reconnect()

    def choose_server(servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        """nats-py's reconnect hook: the least-tried server, after a growing wait.

        One log line per attempt, saying when it comes: the wait doubles, so a
        process whose stack is gone logs every few seconds, not several times
        a second.
        """
        server = min(servers, key=lambda s: s.reconnects)
        delay = reconnect_delay(server.reconnects)
        if server.reconnects:
            why = nc.last_error or "no answer"
            log.warning(
                "nats (%s): cannot reach %s (%s); attempt %d in %.1fs",
                name,
                server.uri.netloc,
                why,
                server.reconnects + 1,
                delay,
            )
        return server, delay

    options: dict[str, Any] = {
        "servers": _servers(settings),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_WAIT,
        "ping_interval": PING_INTERVAL,
        "max_outstanding_pings": 2,
        "connect_timeout": 2,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnected,
        "tls": _tls_context(settings),
        "user": settings.nats_user,
        "password": settings.nats_password,
        "token": settings.nats_token,
        "user_credentials": settings.nats_creds,
        "inbox_prefix": inbox_prefix(settings),
        # A client buffers this much while reconnecting instead of failing.
        "pending_size": 64 * 1024 * 1024,
    }
    if _HAS_RECONNECT_HOOK:
        options["reconnect_to_server_handler"] = choose_server
    nc = NATS()
    if wait is None:
        try:
            await _connect_unless_abandoned(nc, options)
        except BaseException:
            # Cancelled while waiting (a service told to stop): leave no
            # reconnect loop behind.
            with anyio.CancelScope(shield=True):
                await nc.close()
            raise
        connected = True
        if waiting is not None and waiting.attempts:
            log.info("%s: connected to NATS at %s", name, settings.nats_url)
        return nc
    try:
        with anyio.fail_after(wait):
            await nc.connect(**options)
    except TimeoutError:
        await nc.close()
        if refused:
            raise StackUnavailable(
                f"NATS at {settings.nats_url} refused this connection ({refused[0]}); "
                "check SLUICE_NATS_USER and SLUICE_NATS_PASSWORD (or SLUICE_NATS_TOKEN, "
                "SLUICE_NATS_CREDS)."
            ) from None
        raise StackUnavailable(
            f"cannot reach NATS at {settings.nats_url}; is the stack running? "
            "Start it with `sluice dev`, or set SLUICE_NATS_URL."
        ) from None
    connected = True
    return nc


#: The longest pause between two "waiting for NATS" lines of one process.
WAITING_LOG_MAX = 60.0


class _WaitingLog:
    """Says "waiting for NATS at …" at INFO on the first failed attempt, then
    after 1, 2, 4 … seconds (at most WAITING_LOG_MAX): a service started before
    its server is visible in the log without a line every half second."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.attempts = 0
        self._next = 0.0
        self._gap = 1.0

    def failed(self, reason: str) -> None:
        self.attempts += 1
        now = time.monotonic()
        if now < self._next:
            return
        log.info(
            "%s: waiting for NATS at %s (%s); still trying (%d attempts)",
            self.name,
            self.url,
            reason,
            self.attempts,
        )
        self._next = now + self._gap
        self._gap = min(self._gap * 2, WAITING_LOG_MAX)


async def close(nc: NATS) -> None:
    """Close ``nc``; a connection the server dropped just before is closed quietly.

    nats-py flushes what is still buffered on close, and raises if the socket
    is already gone (a server killed while a service stops, a served flow
    stopped after its stack): nothing of that buffer could have arrived
    anyway, and the closer is stopping, so it is not its error.
    """
    if nc.is_reconnecting:
        # What nats-py buffered for the next connection cannot be delivered
        # now. Left in, its close flushes it into the dead socket, raises, and
        # skips the rest: its subscriptions' tasks are then destroyed pending.
        nc._pending, nc._pending_data_size = [], 0
    try:
        await nc.close()
    except (OSError, nats.errors.Error) as exc:
        log.debug("closing the NATS connection: the server had dropped it (%s)", exc)
    except RuntimeError as exc:
        # uvloop's way of saying the same: its transport raises "the handler is
        # closed" on that flush where asyncio's only logs.
        if not nc.is_closed:
            raise
        log.debug("closing the NATS connection: the server had dropped it (%s)", exc)


async def wait_for_server(settings: Settings, *, name: str) -> None:
    """Return once NATS at ``settings.nats_url`` accepts this process, logging
    "waiting for NATS at …" meanwhile (see :func:`connect`). Cancellable."""
    nc = await connect(settings, name=name)
    await nc.close()


#: A repeatable request with no reply after this long is sent again (see
#: :func:`request`); later copies follow at the same pace until the time-out.
#: A queue group hands each copy to a replica at random, so with one of two
#: replicas paused, k copies all miss with probability 2**-k: a bound on the
#: copies would be a bound on how unlucky a request may be.
HEDGE_SECONDS = 0.25


async def request(
    nc: NATS,
    subject: str,
    payload: Any,
    reply_type: type[T],
    *,
    timeout: float,
    repeatable: bool = False,
) -> T:
    """Send a request and decode the reply; raise the SluiceError it carries.

    ``repeatable`` says that the request may take effect twice without harm
    (a read, a create with an idempotency key, a proposal with a transition
    id). Then, while no reply has come, the same bytes are sent again every
    :data:`HEDGE_SECONDS` until ``timeout``, and the first reply wins: a queue
    group hands each copy to any replica, so one paused or dead replica costs
    a fraction of a second, not the whole ``timeout``.
    Earlier copies keep waiting, so a slow but healthy replica still counts.

    Raises StackUnavailable when nobody serves the subject or no reply comes
    within ``timeout``; a raised error does not say whether the request took
    effect, so callers that must not repeat work send an idempotency key.
    """
    data = payload if isinstance(payload, bytes) else encode(payload)
    try:
        if repeatable:
            msg = await _hedged(nc, subject, data, timeout)
        else:
            msg = await nc.request(subject, data, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise StackUnavailable(
            f"no service answers {subject!r}; is the orchestrator running?"
        ) from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise StackUnavailable(f"no reply on {subject!r} within {timeout:g}s") from None
    except nats.errors.ConnectionClosedError:
        raise StackUnavailable("the NATS connection is closed") from None
    return decode_reply(msg.data, reply_type)


async def _hedged(nc: Any, subject: str, data: bytes, timeout: float) -> Any:
    """The first reply to copies of one request sent every HEDGE_SECONDS (see :func:`request`)."""
    replies: list[Any] = []
    failures: list[BaseException] = []
    done = anyio.Event()

    async def one_copy() -> None:
        try:
            replies.append(await nc.request(subject, data, timeout=timeout))
        except (nats.errors.Error, TimeoutError) as exc:
            failures.append(exc)
            if isinstance(exc, nats.errors.NoRespondersError | nats.errors.ConnectionClosedError):
                done.set()  # no copy can do better
            return
        done.set()

    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            while True:
                tg.start_soon(one_copy)
                with anyio.move_on_after(HEDGE_SECONDS):
                    await done.wait()
                if done.is_set():
                    break
            await done.wait()
            tg.cancel_scope.cancel()
    if replies:
        return replies[0]
    log.debug("no reply on %s to %d copies: %r", subject, len(failures), failures[-3:])
    if failures and not isinstance(failures[-1], TimeoutError | nats.errors.TimeoutError):
        raise failures[-1]
    raise nats.errors.TimeoutError
