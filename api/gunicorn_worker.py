"""The API's gunicorn worker: gunicorn's ``gthread``, but a thread keeps a busy connection for a moment.

In ``gthread`` every request of a keep-alive connection makes the round
of the worker's threads: the main thread's poller sees it readable and
submits it to the pool; the pool thread answers and hands the connection
back through a pipe, and the main thread registers it with the poller
again: two thread wake-ups, a pipe write and read and four poller calls per
request.

Here the thread that answered waits up to ``THREEPORT_API_LINGER`` seconds
(default 0.5; 0 turns it off) for the same connection's next request and
answers it itself; only a connection that stays quiet longer goes back to the
poller. A lingering thread delays nobody: one thread always stays free for
the other connections (so with more busy connections than threads, the rest
take gthread's round), and a request that finds no free thread (the free one
busy with a slow request) wakes the thread that has lingered longest, through
a pipe of its own; it hands its connection back and takes the request.

A request gunicorn itself cannot read (a malformed request line or header,
a line or headers over its limits) is answered by gunicorn before the app
sees it; in this worker's process that answer is ``application/problem+json``
like every other error of the API, not gunicorn's HTML page.
"""

from __future__ import annotations

import collections
import json
import os
import select
import threading
import time

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from .errors import PROBLEM_JSON, problem_body

__all__ = ["LingeringThreadWorker", "LINGER_ENV", "DEFAULT_LINGER"]

#: Seconds a thread waits for its connection's next request (0: hand it back at once, as gthread does).
LINGER_ENV = "THREEPORT_API_LINGER"
DEFAULT_LINGER = 0.5


class LingeringThreadWorker(ThreadWorker):
    """gunicorn's ``gthread`` worker whose threads wait a moment for a connection's next request."""

    def init_process(self) -> None:
        # In the worker process, before gunicorn starts the pool and the main loop (run()).
        self.linger = float(os.environ.get(LINGER_ENV, DEFAULT_LINGER))
        self._counts = threading.Lock()
        self._queued = 0  # handed to the pool, not started yet
        self._free = self.cfg.threads  # threads not running handle()
        self._lingering: collections.deque[int] = collections.deque()  # wake-up pipes, longest lingering first
        self._local = threading.local()
        util.write_error = write_problem  # gunicorn's own error answers (Worker.handle_error), in this process
        super().init_process()

    def enqueue_req(self, conn) -> None:
        with self._counts:
            self._queued += 1
            wake = self._lingering.popleft() if self._queued > self._free and self._lingering else None
        try:
            super().enqueue_req(conn)
        except BaseException:  # not submitted (the pool is shutting down): it waits for no thread
            with self._counts:
                self._queued -= 1
            raise
        finally:
            if wake is not None:  # the thread taken off the list waits for this wake-up
                os.write(wake, b"\0")

    def handle(self, conn):
        with self._counts:
            self._queued -= 1
            self._free -= 1
        try:
            result = super().handle(conn)
            while result is True and self.alive and self._next_request_came(conn):
                result = super().handle(conn)
            return result
        finally:
            with self._counts:
                self._free += 1

    def _next_request_came(self, conn) -> bool:
        """Whether ``conn``'s next request arrived within the linger (False: hand the connection back)."""
        if conn.parser.unreader.buf.getvalue() or getattr(conn.sock, "pending", lambda: 0)():
            return True  # read already (behind the last request's body, or inside TLS)
        wake_r, wake_w = self._wake_pipe()
        with self._counts:
            if self.linger <= 0 or self._queued >= self._free:
                return False  # keep a thread free for the other connections
            self._lingering.append(wake_w)
        try:
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            deadline = time.monotonic() + self.linger
            ready: set[int] = set()
            while not ready and (left := deadline - time.monotonic()) > 0:
                ready = {fd for fd, _ in poller.poll(left * 1000)}
            return bool(ready) and wake_r not in ready
        except (OSError, ValueError):  # the connection is gone
            return False
        finally:
            with self._counts:
                # Off the list: a request took it to wake us, and the wake-up is (or is about to be) in the pipe.
                woken = wake_w not in self._lingering
                if not woken:
                    self._lingering.remove(wake_w)
            if woken:
                self._drain(wake_r)

    def _wake_pipe(self) -> tuple[int, int]:
        """This thread's wake-up pipe (read end, write end)."""
        pipe = getattr(self._local, "pipe", None)
        if pipe is None:
            pipe = self._local.pipe = os.pipe()
            os.set_blocking(pipe[0], False)
        return pipe

    @staticmethod
    def _drain(wake_r: int) -> None:
        """Read the one wake-up sent (it may still be on its way: wait for it a moment)."""
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if poller.poll(1000):
            os.read(wake_r, 64)


def write_problem(sock, status: int, reason: str, message: str) -> None:
    """gunicorn's ``util.write_error``, answering with a problem+json body instead of an HTML page."""
    body = json.dumps(problem_body(status=status, title=reason, detail=message or reason)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)
