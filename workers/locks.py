"""Per-object locks on a JetStream key-value bucket.

A lock is the key ``<kind>.<object id>`` in one bucket. Acquiring publishes
the key only if the subject has no message (``Nats-Expected-Last-Subject-
Sequence: 0``) with a per-message TTL, so a crashed holder's lock frees
itself. The message's stream sequence is the lease's revision and fencing
token: renewing is a compare-and-set publish that keeps a TTL (nats-py's
``kv.update`` would drop it) and moves the revision; releasing is a
compare-and-set publish of a delete marker that lives one second, so a
stale holder can neither renew nor release the lock of the holder that came
after it. A key released less than a second ago is taken by a second
compare-and-set on the marker's sequence, after reading that the last
message is a marker. Releasing this way costs the server a third less than
deleting the holder's message through the JetStream API. A holder that has
no use for the answer lets the lock go (``Lease.let_go``): the same publish
without a reply subject, one write and no wait.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
from typing import Iterator, Optional, Sequence

import nats.js.errors
from dramatiq.errors import BrokerError
from nats.js import api

from .connection import Connection, server_urls
from .direct import Reply
from .errors import InvalidName, JetStreamError, LockError, LockHeld, LockLost
from .replicas import STREAM_NAME_IN_USE, raise_replicas

__all__ = ["LockManager", "Lease", "LeaseKeeper", "Kept"]

logger = logging.getLogger(__name__)

KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")
BUCKET = re.compile(r"[a-zA-Z0-9_-]+")
WRONG_LAST_SEQUENCE = 10071
OPERATION, DELETED = "KV-Operation", "DEL"  # a released key's marker, as JetStream KV marks deletes


class Lease:
    """A held lock. ``revision`` grows with every acquisition and renewal of the key."""

    def __init__(self, manager: LockManager, key: str, revision: int, ttl: float) -> None:
        self.manager = manager
        self.key = key
        self.revision = revision
        self.ttl = ttl
        self._guard = threading.Lock()
        self.released = False

    def renew(self, ttl: Optional[float] = None) -> None:
        """Extend the lease by ``ttl`` seconds (its own TTL by default).

        Raises:
          LockLost: the key expired or was taken by someone else.
        """
        with self._guard:
            if self.released:
                raise LockLost(f"lock {self.key!r} was already released")
            self.ttl = ttl or self.ttl
            self.revision = self.manager._renew(self.key, self.revision, self.ttl)

    def release(self) -> bool:
        """Give the lock up if it is still ours; returns whether it was."""
        with self._guard:
            if self.released:
                return False
            self.released = True
            return self.manager._release(self.key, self.revision)

    def let_go(self) -> None:
        """Give the lock up without waiting for the server to say it took the release.

        For a holder done with the key that has no use for knowing whether
        it still held it: one write instead of a round trip. A release the
        server refuses (the lease was lost to a newer holder) or that never
        reaches it (NATS unreachable: logged) leaves the key to its TTL, as
        any lost lease is.
        """
        with self._guard:
            if self.released:
                return
            self.released = True
        self.manager._let_go(self.key, self.revision)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lease {self.key!r} revision={self.revision}>"


class Kept:
    """A lease a :class:`LeaseKeeper` renews; ``lost`` once a renewal found the key no longer ours."""

    __slots__ = ("lease", "due", "lost")

    def __init__(self, lease: Lease, due: float) -> None:
        self.lease = lease
        self.due = due
        self.lost = False


class LeaseKeeper:
    """Renews held leases every third of their TTL, from one thread however many leases there are.

    ``kept = keeper.keep(lease)`` when the work under the lease starts,
    ``keeper.drop(kept)`` before releasing it. A renewal racing the release
    is safe: a lease renews and releases under its own lock, and a lease
    released first refuses to renew. A renewal that fails for any other
    reason (NATS unreachable) is tried again a second later.
    """

    def __init__(self, *, retry_after: float = 1.0) -> None:
        self.retry_after = retry_after
        self._kept: set[Kept] = set()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def keep(self, lease: Lease) -> Kept:
        kept = Kept(lease, time.monotonic() + lease.ttl / 3)
        with self._lock:
            self._kept.add(kept)
            if self._thread is None or self._pid != os.getpid():  # none yet, or not in this (forked) process
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="lease renewals", daemon=True)
                self._thread.start()
        return kept

    def drop(self, kept: Kept) -> None:
        with self._lock:
            self._kept.discard(kept)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [kept for kept in self._kept if kept.due <= now]
                soonest = min((kept.due for kept in self._kept), default=now + 1.0)
            for kept in due:
                self._renew(kept)
            if not due:
                time.sleep(min(1.0, max(0.01, soonest - now)))  # a new lease is due a third of its TTL later

    def _renew(self, kept: Kept) -> None:
        try:
            kept.lease.renew()
            kept.due = time.monotonic() + kept.lease.ttl / 3
        except LockLost:
            kept.lost = True
            self.drop(kept)
        except LockError:
            logger.warning("Could not renew %r; trying again.", kept.lease.key, exc_info=True)
            kept.due = time.monotonic() + self.retry_after


class LockManager:
    """Locks in the bucket ``bucket`` (a JetStream KV bucket).

    Build it from a URL, or on an existing :class:`workers.connection.Connection`
    (a broker's ``connection``) to share its socket, with that broker's
    ``replicas``. Thread-safe, and usable from any number of processes and
    hosts at once.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        bucket: str = "locks",
        connection: Optional[Connection] = None,
        servers: Optional[Sequence[str]] = None,
        replicas: int = 1,
        timeout: float = 5.0,
    ) -> None:
        if not BUCKET.fullmatch(bucket):
            raise InvalidName(f"invalid bucket name {bucket!r}")
        if connection is None:
            urls = list(servers) if servers else server_urls(url)
            connection = Connection(urls, request_timeout=timeout)
        self.connection = connection
        self.bucket = bucket
        self.replicas = replicas
        self.timeout = timeout
        self.holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
        self._stream = f"KV_{bucket}"
        self._ready = False
        #: Until when a request may find the bucket without a leader yet (see _request).
        self._settled_by = 0.0

    # Public API -------------------------------------------------------------------
    def acquire(self, key: str, ttl: float = 30.0) -> Optional[Lease]:
        """Take the lock ``key`` for ``ttl`` seconds; None if someone else holds it."""
        ttl = _check_ttl(ttl)
        doing = f"acquire {key!r}"
        revision = self._publish(_check_key(key), 0, ttl, doing)
        if revision is None:  # held, or released a moment ago (its marker not yet expired)
            last = self._released_at(key, doing)
            if last is not None:  # a marker's sequence, or 0 if the key has just expired
                revision = self._publish(key, last, ttl, doing)
        return Lease(self, key, revision, ttl) if revision is not None else None

    @contextlib.contextmanager
    def hold(self, key: str, ttl: float = 30.0) -> Iterator[Lease]:
        """``with locks.hold(key) as lease:`` … released on exit.

        Raises:
          LockHeld: someone else holds the lock.
        """
        lease = self.acquire(key, ttl)
        if lease is None:
            raise LockHeld(f"lock {key!r} is held by someone else")
        with lease:
            yield lease

    def holder_of(self, key: str) -> Optional[dict]:
        """Who holds ``key`` (host and pid), or None if nobody does."""
        return self._call(lambda: self._holder_of(_check_key(key)), f"read {key!r}")

    def delete_bucket(self) -> bool:
        """Delete the whole bucket (every lock in it); whether it existed."""

        async def delete() -> bool:
            js = await self.connection.jetstream()
            try:
                await js.delete_stream(self._stream)
            except nats.js.errors.NotFoundError:
                return False
            self._ready = False
            return True

        return self._call(delete, f"delete bucket {self.bucket!r}")

    def close(self) -> None:
        self.connection.close_sync()

    # Loop thread ------------------------------------------------------------------
    def _call(self, fn, doing: str):
        try:
            return self.connection.run(fn, doing=doing, timeout=self.connection.connect_timeout + self.timeout + 1)
        except JetStreamError as exc:
            raise LockError(str(exc)) from exc

    def _subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    async def _js(self):
        js = await self.connection.jetstream()
        if not self._ready:
            config = api.StreamConfig(
                name=self._stream,
                subjects=[f"$KV.{self.bucket}.>"],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                max_msgs_per_subject=1,
                allow_msg_ttl=True,
                allow_rollup_hdrs=True,
                allow_direct=True,
                deny_delete=False,
                discard=api.DiscardPolicy.NEW,
                description=f"threeport locks ({self.bucket})",
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise
                await raise_replicas(js, self._stream, self.replicas)  # and the rest of it as it is
            self._ready = True
            self._settled_by = time.monotonic() + self.timeout
        return js

    # Requests on the calling thread's own connection (workers.direct) ---------------
    def _publish(self, key: str, last: int, ttl: float, doing: str) -> Optional[int]:
        """Write ``key`` if its last revision is ``last``: the new revision, or None if it was not."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last), "Nats-TTL": f"{math.ceil(ttl)}s"}
        answer = self._request(self._subject(key), self.holder, headers, doing)
        if "error" in answer:
            if answer["error"].get("err_code") == WRONG_LAST_SEQUENCE:
                return None
            raise LockError(f"{doing}: {_described(answer['error'])}")
        return int(answer["seq"])

    def _mark_released(self, key: str, revision: int) -> bool:
        """Replace ``revision`` with a delete marker that expires in a second; False if it was not the last."""
        doing = f"release {key!r}"
        answer = self._request(self._subject(key), b"", _release_marker(revision), doing)
        if "error" in answer:
            if answer["error"].get("err_code") == WRONG_LAST_SEQUENCE:  # expired, or a newer holder's
                return False
            raise LockError(f"{doing}: {_described(answer['error'])}")
        return True

    def _let_go(self, key: str, revision: int) -> None:
        """``_mark_released`` without a reply subject, so without the server's answer."""
        try:
            self.connection.direct.publish(self._subject(key), b"", _release_marker(revision), timeout=self.timeout)
        except BrokerError as exc:
            logger.warning("Could not release %r (%s); it frees itself when its TTL runs out.", key, exc)

    def _released_at(self, key: str, doing: str) -> Optional[int]:
        """The sequence of ``key``'s last message if that is a release marker, 0 if there is none, else None."""
        request = json.dumps({"last_by_subj": self._subject(key)}).encode()
        reply = self._reply(f"$JS.API.DIRECT.GET.{self._stream}", request, {}, doing)
        if reply.headers.get("Status") == "404":  # expired since the first try
            return 0
        if reply.headers.get("Status") or reply.headers.get(OPERATION) != DELETED:
            return None  # a holder's, or no answer worth acting on
        return int(reply.headers["Nats-Sequence"])

    def _request(self, subject: str, payload: bytes, headers: dict[str, str], doing: str) -> dict:
        """JetStream's JSON answer to one request; LockError when none came."""
        if not self._ready:
            self._call(self._js, doing)
        reply = self._reply(subject, payload, headers, doing)
        # A bucket just made (or just raised) on a cluster answers nobody until its leader is
        # elected and its interest reached our server: no responders, so nothing was written;
        # ask again for a moment. Later, no answer is an outage, said at once.
        while _unanswered(reply) and time.monotonic() < self._settled_by:
            time.sleep(0.05)
            reply = self._reply(subject, payload, headers, doing)
        if _unanswered(reply):
            raise LockError(f"{doing}: JetStream did not answer (stream unavailable or no quorum)")
        return json.loads(reply.data)

    def _reply(self, subject: str, payload: bytes, headers: dict[str, str], doing: str) -> Reply:
        """The answer to one request on the calling thread's connection; LockError when none came."""
        try:
            return self.connection.direct.request(subject, payload, headers, timeout=self.timeout)
        except BrokerError as exc:
            raise LockError(f"{doing}: {exc}") from exc

    async def _holder_of(self, key: str) -> Optional[dict]:
        js = await self._js()
        try:
            raw = await js.get_msg(self._stream, subject=self._subject(key), direct=True)
        except nats.js.errors.NotFoundError:
            return None
        if (raw.headers or {}).get(OPERATION) == DELETED:  # released
            return None
        return {**json.loads(raw.data or b"{}"), "revision": raw.seq}

    # Called by Lease ---------------------------------------------------------------
    def _renew(self, key: str, revision: int, ttl: float) -> int:
        new_revision = self._publish(key, revision, ttl, f"renew {key!r}")
        if new_revision is None:
            raise LockLost(f"lock {key!r} expired or was taken by someone else")
        return new_revision

    def _release(self, key: str, revision: int) -> bool:
        return self._mark_released(key, revision)


def _release_marker(revision: int) -> dict[str, str]:
    """Headers that replace ``revision`` with a delete marker living one second, if it is still the last."""
    return {"Nats-Expected-Last-Subject-Sequence": str(revision), "Nats-TTL": "1s", OPERATION: DELETED}


def _unanswered(reply: Reply) -> bool:
    return reply.headers.get("Status") == "503" or not reply.data


def _described(error: dict) -> str:
    return f"{error.get('description', 'refused')} (JetStream error {error.get('err_code')})"


def _check_key(key: str) -> str:
    if not KEY.fullmatch(key):
        raise InvalidName(f"invalid lock key {key!r}: use letters, digits, '-', '_', '/', '=' and single dots")
    return key


def _check_ttl(ttl: float) -> float:
    if ttl < 1:
        raise ValueError("lock TTL must be at least 1 second (JetStream's smallest message TTL)")
    return ttl
