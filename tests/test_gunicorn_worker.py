"""The API's gunicorn worker (LingeringThreadWorker) under real gunicorn, on bare keep-alive sockets."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.local_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
#: Long enough that a test waiting on it would plainly be waiting on it.
LINGER = 5.0


@pytest.fixture
def serve():
    """Start gunicorn with the worker, one process and ``threads`` threads; yields its port."""
    procs: list[subprocess.Popen] = []

    def start(threads: int, linger: float = LINGER, keep_alive: int = 2) -> int:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", "api.gunicorn_worker.LingeringThreadWorker"]
            + ["--workers", "1", "--threads", str(threads), "--keep-alive", str(keep_alive)]
            + ["--bind", f"127.0.0.1:{port}", "--no-control-socket"]
            + ["tests.helpers.thread_app:app"],
            cwd=ROOT,
            env={**os.environ, "THREEPORT_API_LINGER": str(linger)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return port
            assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.05)

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


class Connection:
    """One keep-alive connection that sends requests and reads their answers (the serving thread's id)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""

    def send(self, count: int = 1, path: str = "/") -> None:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode() * count)

    def answer(self) -> str:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buffer = rest[length:]
        return rest[:length].decode()

    def request(self, path: str = "/") -> str:
        self.send(path=path)
        return self.answer()

    def closed_by_server(self) -> bool:
        """Whether the server closed the connection (it sends nothing unasked otherwise)."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1) == b""
        except BlockingIOError:
            return False
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(30)

    def close(self) -> None:
        self.sock.close()


def test_each_busy_connection_keeps_its_thread(serve):
    # Given the worker with three threads (one always stays free) and two connections
    port = serve(threads=3)
    a = Connection(port)
    a.request()
    b = Connection(port)

    # When they take turns, each request answered before the next is sent, then one sends two at once
    answers = {"a": [], "b": []}
    for _ in range(3):
        answers["a"].append(a.request())
        answers["b"].append(b.request())
    a.send(2)
    answers["a"] += [a.answer(), a.answer()]

    # Then each connection was answered by a thread of its own, the same every time (threads that
    # handed their connection back after each request would have answered both: one was always free)
    assert len(set(answers["a"])) == len(set(answers["b"])) == 1
    assert answers["a"][0] != answers["b"][0]
    a.close()
    b.close()


def test_a_request_that_finds_no_free_thread_wakes_a_lingering_one(serve):
    # Given the worker with three threads: two lingering on their connections, the third busy with a slow request
    # (each connection opened as it sends: a new connection holds a thread until its first request)
    port = serve(threads=3)
    a = Connection(port)
    a.request()
    b = Connection(port)
    b.request()
    slow = Connection(port)
    slow.send(path=f"/slow?{1.2 * LINGER}")
    time.sleep(0.5)

    # When another connection sends a request
    started = time.monotonic()
    late = Connection(port)
    late.request()

    # Then it is answered long before a linger or the slow request would have ended
    assert time.monotonic() - started < LINGER / 2
    # And the connections whose thread let them go are still served
    assert a.request() and b.request()
    for connection in (a, b, slow, late):
        connection.close()


def test_an_idle_connection_is_closed_after_the_linger_and_the_keep_alive(serve):
    # Given the worker keeping idle connections 1 s, one with a linger and one without
    lingering = Connection(serve(threads=2, keep_alive=1))
    handed_back = Connection(serve(threads=2, keep_alive=1, linger=0))

    # When each answers a request, then stays quiet for 2 s
    lingering.request()
    handed_back.request()
    time.sleep(2)

    # Then the one handed back to the poller at once was closed after its keep-alive;
    # the other is still held by its thread (the linger, then the keep-alive)
    assert handed_back.closed_by_server()
    assert not lingering.closed_by_server()
    assert lingering.request()
    lingering.close()
    handed_back.close()
