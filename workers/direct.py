"""Requests to NATS on a blocking socket of the calling thread's own.

The hot path's requests (an enqueue's publish and its PubAck, a lock's
publish or delete) would otherwise hop to the loop thread and back
(:mod:`workers.bridge`): two thread wake-ups and the GIL handed over twice
per call, which cost three times the request itself. Here each thread keeps
one plain connection and speaks the NATS protocol's few verbs a request
needs: ``HPUB`` with a reply subject, and the ``MSG``/``HMSG`` that answers
it; and ``PUB`` for a message nobody answers (a consumer's ack). Everything
else (subscriptions, pulls, stream management) stays on nats-py.

A connection is opened on a thread's first request, to the first of the
servers that answers (the configured ones, then those a server announced as
its cluster's), with the URL's credentials (``user:password@`` or
``token@``) and TLS for ``tls://`` URLs or servers that require it. It is
dropped on any error or timeout (a late answer can never be taken for the
next request's), after a fork, and after a minute unused (the server would
otherwise find it stale, as nobody answers its pings then). A request that
fails on a reused connection is sent once more on a new one: every request
sent here is safe to repeat (a publish carries a ``Nats-Msg-Id``, a lock's
publish and delete are compare-and-set).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import ssl
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TypeVar
from urllib.parse import unquote, urlsplit

from dramatiq.errors import ConnectionFailed

__all__ = ["DirectClient", "DirectRequests", "NoAnswer", "TooLarge", "Reply"]

T = TypeVar("T")

IDLE_LIMIT = 60.0
_CRLF = b"\r\n"


class NoAnswer(ConnectionFailed):
    """No answer came in time (the connection is dropped: a late answer must not be read as the next one's)."""


class TooLarge(ConnectionFailed):
    """A message over the server's ``max_payload``: refused here, as the server would drop the connection."""


@dataclass
class Reply:
    """An answer: its payload and headers (``Status`` holds a status line's code, as in nats-py)."""

    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class DirectRequests:
    """One :class:`DirectClient` per thread (and per process) for one set of servers."""

    def __init__(self, servers: Sequence[str], *, name: str, connect_timeout: float = 5.0) -> None:
        self.servers = list(servers)
        self.name = name
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        self._clients: weakref.WeakSet[DirectClient] = weakref.WeakSet()
        self._lock = threading.Lock()

    def request(self, subject: str, payload: bytes, headers: dict[str, str], *, timeout: float) -> Reply:
        """Send one request and wait up to ``timeout`` seconds for its answer."""
        return self.request_many([(subject, payload, headers)], timeout=timeout)[0]

    def request_many(
        self, requests: Sequence[tuple[str, bytes, dict[str, str]]], *, timeout: float
    ) -> list[Optional[Reply]]:
        """Send all ``requests`` at once, then read their answers (None for one that did not come).

        Raises :class:`NoAnswer` when none came in time, ConnectionFailed when
        the connection failed before any did (after one more try on a new
        connection when a reused one failed: one the server closed while it
        was idle, say).
        """
        return self._on_a_connection(lambda client: client.request_many(requests, timeout))

    def publish(
        self, subject: str, payload: bytes, headers: Optional[dict[str, str]] = None, *, timeout: float
    ) -> None:
        """Send one message that wants no answer (an ack); ConnectionFailed when it could not be sent.

        Sent once more on a new connection when a reused one failed: every
        message sent this way is safe to repeat.
        """
        self._on_a_connection(lambda client: client.publish(subject, payload, headers, timeout))

    def close(self) -> None:
        """Close every thread's connection; a later request opens a new one."""
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            client.close()

    def _on_a_connection(self, call: Callable[[DirectClient], T]) -> T:
        """``call(client)`` on this thread's connection; once more on a new one if a reused one failed."""
        client = self._client()
        try:
            return call(client)
        except (NoAnswer, TooLarge):  # a new connection would fare no better
            raise
        except ConnectionFailed:
            if not client.reused:
                raise
        return call(self._client())

    def _client(self) -> DirectClient:
        client: Optional[DirectClient] = getattr(self._local, "client", None)
        if client is not None and client.usable():
            return client
        client = DirectClient.connect(self.servers, name=self.name, timeout=self.connect_timeout)
        self._local.client = client
        with self._lock:
            self._clients.add(client)
            known = {_address(url) for url in self.servers}
            self.servers += [url for url in client.discovered if _address(url) not in known]
        return client


class DirectClient:
    """One blocking NATS connection, for one thread at a time."""

    def __init__(self, sock: socket.socket, *, server: str) -> None:
        self.sock = sock
        self.server = server
        self.pid = os.getpid()
        self.inbox = f"_INBOX.{secrets.token_hex(11)}"
        self.reused = False
        self.last_used = time.monotonic()
        self._buffer = bytearray()
        self._closed = False
        self._next = 0
        self._deadline = 0.0
        self.max_payload = 1024 * 1024
        #: The cluster's other servers as the server announced them, as URLs like the one used here.
        self.discovered: list[str] = []

    @classmethod
    def connect(cls, servers: Sequence[str], *, name: str, timeout: float) -> DirectClient:
        """Connect to the first server of ``servers`` (tried from a random one on) that answers."""
        start = random.randrange(len(servers))
        errors = []
        for url in [*servers[start:], *servers[:start]]:
            try:
                return cls._connect_to(url, name=name, timeout=timeout)
            except (OSError, ConnectionFailed, ValueError) as exc:
                errors.append(f"{url}: {exc}")
        raise ConnectionFailed(f"cannot connect to NATS ({'; '.join(errors)})")

    @classmethod
    def _connect_to(cls, url: str, *, name: str, timeout: float) -> DirectClient:
        parts = _parsed(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock, server=f"{host}:{port}")
        try:
            client._deadline = time.monotonic() + timeout
            verb, info_line = client._read_line().partition(b" ")[::2]
            if verb != b"INFO":
                raise ConnectionFailed(f"{host}:{port} is not a NATS server (it said {verb[:20]!r})")
            info = json.loads(info_line)
            client.max_payload = int(info.get("max_payload", client.max_payload))
            userinfo = parts.netloc.rpartition("@")[0]
            client.discovered = [
                f"{parts.scheme or 'nats'}://{userinfo + '@' if userinfo else ''}{address}"
                for address in info.get("connect_urls") or []
            ]
            if parts.scheme == "tls" or info.get("tls_required"):
                context = ssl.create_default_context()
                client.sock = context.wrap_socket(sock, server_hostname=host)
            options = {
                "verbose": False,
                "pedantic": False,
                "headers": True,
                "no_responders": True,
                "protocol": 1,
                "lang": "python",
                "version": "threeport",
                "name": name,
            }
            if parts.username and parts.password is not None:
                options.update(user=unquote(parts.username), **{"pass": unquote(parts.password)})
            elif parts.username:
                options["auth_token"] = unquote(parts.username)
            client._send(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
            while client._read_line() != b"PONG":  # -ERR raises; INFO and +OK are skipped
                pass
            client._send(f"SUB {client.inbox}.* 1\r\n".encode())
        except BaseException:
            client.close()
            raise
        return client

    def usable(self) -> bool:
        """Open, this process's own, and used recently enough that the server still trusts it."""
        if self.pid != os.getpid():  # forked: the parent's socket; leave it to the parent
            return False
        if self._closed or time.monotonic() - self.last_used > IDLE_LIMIT:
            self.close()
            return False
        return True

    def request_many(
        self, requests: Sequence[tuple[str, bytes, dict[str, str]]], timeout: float
    ) -> list[Optional[Reply]]:
        """Send every request, then read answers until all came or ``timeout`` passed.

        When the connection fails after some answers came, the others are None.
        """
        self._deadline = time.monotonic() + timeout
        waiting: dict[bytes, int] = {}
        out = []
        for index, (subject, payload, headers) in enumerate(requests):
            self._next += 1
            token = str(self._next).encode()
            waiting[token] = index
            head = _header_block(headers)
            self._check_size(head, payload)
            out.append(
                b"HPUB %s %s.%s %d %d\r\n%s%s\r\n"
                % (subject.encode(), self.inbox.encode(), token, len(head), len(head) + len(payload), head, payload)
            )
        replies: list[Optional[Reply]] = [None] * len(requests)
        try:
            self._send(b"".join(out))
            while waiting:
                token, reply = self._read_reply()
                index = waiting.pop(token, None)
                if index is not None:
                    replies[index] = reply
        except ConnectionFailed:
            self.close()
            if len(waiting) == len(requests):  # nothing answered: the caller decides
                raise
        self.reused, self.last_used = True, time.monotonic()
        return replies

    def publish(self, subject: str, payload: bytes, headers: Optional[dict[str, str]], timeout: float) -> None:
        """Send one message without a reply subject, then answer what the server sent meanwhile.

        Nothing answers such a message, so a connection that only publishes
        would never read the server's pings (and be dropped as stale) nor an
        ``-ERR``: whatever has arrived is read here without waiting.
        """
        self._deadline = time.monotonic() + timeout
        head = _header_block(headers) if headers else b""
        self._check_size(head, payload)
        if head:
            size = len(head) + len(payload)
            frame = b"HPUB %s %d %d\r\n%s%s\r\n" % (subject.encode(), len(head), size, head, payload)
        else:
            frame = b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
        try:
            self._send(frame)
            self._read_waiting()
        except ConnectionFailed:
            self.close()
            raise
        self.reused, self.last_used = True, time.monotonic()

    def _check_size(self, head: bytes, payload: bytes) -> None:
        if len(head) + len(payload) > self.max_payload:  # the server would drop the connection
            raise TooLarge(
                f"a message of {len(head) + len(payload):,} bytes is over the server's limit"
                f" of {self.max_payload:,} (max_payload)"
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.pid == os.getpid():
                try:
                    self.sock.close()
                except OSError:
                    pass

    # Protocol ---------------------------------------------------------------------
    def _read_reply(self) -> tuple[bytes, Reply]:
        """The next answer to one of our requests: (its reply token, the reply)."""
        while True:
            line = self._read_line()
            verb = line[:4]
            if verb == b"MSG ":
                subject, _sid, size = line[4:].split(b" ")
                data = self._read_exact(int(size))
                return subject.rpartition(b".")[2], Reply(bytes(data))
            if verb == b"HMSG":
                subject, _sid, head_size, total = line[5:].split(b" ")
                body = self._read_exact(int(total))
                head = int(head_size)
                return subject.rpartition(b".")[2], Reply(bytes(body[head:]), _headers(bytes(body[:head])))
            if line == b"PING":
                self._send(b"PONG\r\n")
            # INFO (cluster changes), +OK and PONG need nothing from us

    def _read_waiting(self) -> None:
        """Take in what the server has already sent, without blocking, answering its pings."""
        self.sock.settimeout(0)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                raise ConnectionFailed(f"connection to NATS at {self.server} failed: {exc}") from exc
            if not chunk:
                raise ConnectionFailed(f"NATS at {self.server} closed the connection")
            self._buffer += chunk
        while self._buffer.find(_CRLF) >= 0:
            line = self._read_line()  # -ERR raises
            if line == b"PING":
                self._send(b"PONG\r\n")
            elif line.startswith((b"MSG ", b"HMSG")):  # no request waits for it: not ours to read
                raise ConnectionFailed(f"NATS at {self.server} sent a message nobody asked for")
            # INFO (cluster changes), +OK and PONG need nothing from us

    def _read_line(self) -> bytes:
        while True:
            end = self._buffer.find(_CRLF)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                if line.startswith(b"-ERR"):
                    raise ConnectionFailed(f"NATS at {self.server} refused: {line[5:].decode(errors='replace')}")
                return line
            self._fill()

    def _read_exact(self, size: int) -> bytearray:
        while len(self._buffer) < size + 2:
            self._fill()
        data = self._buffer[:size]
        del self._buffer[: size + 2]
        return data

    def _fill(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise NoAnswer(f"no answer from NATS at {self.server} in time")
        try:
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise NoAnswer(f"no answer from NATS at {self.server} in time") from None
        except OSError as exc:
            raise ConnectionFailed(f"connection to NATS at {self.server} failed: {exc}") from exc
        if not chunk:
            raise ConnectionFailed(f"NATS at {self.server} closed the connection")
        self._buffer += chunk

    def _send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(max(0.001, self._deadline - time.monotonic()))
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionFailed(f"connection to NATS at {self.server} failed: {exc}") from exc


def _header_block(headers: dict[str, str]) -> bytes:
    return ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()


def _headers(block: bytes) -> dict[str, str]:
    """A header block (``NATS/1.0 503\\r\\nKey: value\\r\\n...``) as nats-py reads it: ``Status`` for a status line."""
    lines = block.decode(errors="replace").split("\r\n")
    headers: dict[str, str] = {}
    status = lines[0][len("NATS/1.0") :].strip()
    if status:
        code, _, description = status.partition(" ")
        headers["Status"] = code
        if description:
            headers["Description"] = description
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers


def _parsed(url: str):
    """A server URL's parts; ``host:port`` alone is taken as ``nats://host:port``."""
    return urlsplit(url if "://" in url else f"nats://{url}")


def _address(url: str) -> str:
    """A server URL's ``host:port``, without credentials: what tells two servers apart."""
    return _parsed(url).netloc.rpartition("@")[2]
