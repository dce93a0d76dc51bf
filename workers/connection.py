"""A lazily opened NATS connection shared by a broker, its consumers and locks.

The connection lives on the process's loop thread (:mod:`workers.bridge`).
It is opened on first use, reconnects forever once it has been open, and is
re-opened in a forked child instead of reusing the parent's socket. Errors
from nats-py are translated here into Dramatiq's connection errors, so that
every caller sees one family of exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable, Coroutine, Optional, Sequence, TypeVar

import nats
import nats.errors
import nats.js.errors
from dramatiq.errors import BrokerError, ConnectionClosed, ConnectionFailed
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from . import bridge
from .direct import DirectRequests
from .errors import JetStreamError

T = TypeVar("T")

__all__ = ["Connection", "server_urls", "translate_error"]

#: Where NATS is when nothing says otherwise.
DEFAULT_URL = "nats://127.0.0.1:4222"


def server_urls(url: Optional[str]) -> list[str]:
    """The servers of a ``NATS_URL``: comma-separated, blanks left out (``a:4222,`` is one server)."""
    return [u.strip() for u in (url or DEFAULT_URL).split(",") if u.strip()] or [DEFAULT_URL]


logger = logging.getLogger(__name__)


def translate_error(exc: BaseException, doing: str) -> BrokerError:
    """Map a nats-py (or timeout) error onto Dramatiq's connection errors."""
    if isinstance(exc, BrokerError):
        return exc
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return ConnectionClosed(f"{doing}: the NATS connection is closed")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, nats.errors.TimeoutError)):
        return ConnectionFailed(f"{doing}: no answer from NATS in time")
    if isinstance(exc, (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)):
        return ConnectionFailed(f"{doing}: JetStream did not answer (stream unavailable or no quorum)")
    if isinstance(exc, nats.errors.NoServersError):
        return ConnectionFailed(f"{doing}: no NATS server reachable")
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return ConnectionFailed(f"{doing}: JetStream unavailable ({exc.description})")
    if isinstance(exc, nats.js.errors.APIError):
        return JetStreamError(f"{doing}: {exc.description} (JetStream error {exc.err_code})")
    return ConnectionFailed(f"{doing}: {type(exc).__name__}: {exc}")


class Connection:
    """One NATS client for one set of servers, opened on demand.

    ``direct`` sends the hot path's requests (publishes and their PubAcks,
    lock operations) on a blocking connection of the calling thread's own
    (:mod:`workers.direct`) instead of through the loop thread.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        name: Optional[str] = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 5.0,
    ) -> None:
        if not servers:
            raise ValueError("at least one NATS server URL is needed")
        self.servers = list(servers)
        self.name = name or f"threeport-{os.getpid()}"
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._nc: Optional[NATS] = None
        self._js: Optional[JetStreamContext] = None
        self._pid = os.getpid()
        self._opening: Optional[asyncio.Lock] = None
        self._closing = False
        #: The latest error nats-py reported (for a failed first connection's message).
        self._last_error: Optional[BaseException] = None
        self.direct = DirectRequests(self.servers, name=self.name, connect_timeout=connect_timeout)

    @property
    def is_open(self) -> bool:
        """Whether the client is connected now (read from any thread; a hint, not a promise)."""
        nc = self._nc
        return nc is not None and nc.is_connected and self._pid == os.getpid()

    # Used from the loop thread -------------------------------------------------
    async def client(self) -> NATS:
        """The open client (in-loop); opens it on first use."""
        if self._pid != os.getpid():  # forked: the parent's socket and loop are not ours
            self._nc, self._js, self._opening, self._pid = None, None, None, os.getpid()
        nc = self._nc
        if nc is not None and not nc.is_closed:
            return nc
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._nc is None or self._nc.is_closed:
                self._nc = await self._open()
                self._js = self._nc.jetstream(timeout=self.request_timeout)
        return self._nc

    async def jetstream(self) -> JetStreamContext:
        await self.client()
        assert self._js is not None
        return self._js

    async def _open(self) -> NATS:
        # The first connection tries each server twice and gives up (a caller
        # is waiting); once connected, the client reconnects forever.
        nc = NATS()
        self._last_error = None
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=self.servers,
                    name=self.name,
                    connect_timeout=max(1, int(self.connect_timeout)),
                    reconnect_time_wait=0.5,
                    max_reconnect_attempts=1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.connect_timeout,
            )
        except BaseException as exc:
            await _close_quietly(nc)
            where = f"cannot connect to NATS at {', '.join(self.servers)}"
            if isinstance(exc, (asyncio.TimeoutError, nats.errors.TimeoutError)):
                raise ConnectionFailed(f"{where} within {self.connect_timeout:.0f}s") from exc
            if isinstance(exc, nats.errors.NoServersError) and self._last_error is not None:
                exc = self._last_error  # why the servers were not available (refused, TLS, auth)
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ConnectionFailed(f"{where}: {reason}") from (exc if isinstance(exc, Exception) else None)
        nc.options["max_reconnect_attempts"] = -1
        return nc

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            self._closing = True
            try:
                if nc.is_connected:  # send what is buffered (acks) before leaving
                    await asyncio.wait_for(nc.flush(), 2.0)
            except Exception:
                pass
            await _close_quietly(nc)
            self._closing = False

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        level = logging.WARNING if self._nc is not None and self._nc.is_connected else logging.DEBUG
        logger.log(level, "NATS connection error: %s", exc or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            logger.warning("Disconnected from NATS; reconnecting.")

    async def _on_reconnected(self) -> None:
        nc = self._nc
        logger.info("Reconnected to NATS at %s.", nc.connected_url.netloc if nc and nc.connected_url else "?")

    # Used from any other thread --------------------------------------------------
    def run(
        self,
        fn: Callable[[], Coroutine[Any, Any, T]],
        *,
        doing: str,
        timeout: Optional[float] = None,
    ) -> T:
        """Run ``fn()`` on the loop thread, translating failures into connection errors."""
        deadline = timeout if timeout is not None else self.connect_timeout + self.request_timeout
        try:
            return bridge.run(fn(), deadline)
        except BrokerError:
            raise
        except (nats.errors.Error, TimeoutError, asyncio.TimeoutError, OSError) as exc:
            raise translate_error(exc, doing) from exc

    def close_sync(self, timeout: float = 5.0) -> None:
        self.direct.close()
        try:
            bridge.run(self.close(), timeout)
        except Exception:  # closing is best effort
            logger.debug("Error while closing the NATS connection.", exc_info=True)


async def _close_quietly(nc: NATS) -> None:
    try:
        await asyncio.wait_for(nc.close(), 2.0)
    except Exception:
        pass
