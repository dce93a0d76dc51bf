"""Requests on a thread's own blocking connection (workers.direct), against real nats-servers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from contextlib import contextmanager

import nats
import pytest
from dramatiq.errors import ConnectionFailed

from cli.local_servers import NatsServer, free_port, nats_server_binary, wait_for_port
from workers import direct
from workers.direct import DirectClient, DirectRequests, NoAnswer


@contextmanager
def subscribed(url: str, subject: str, on_message):
    """A plain nats-py client on its own thread, calling ``on_message(msg)`` (a coroutine) for ``subject``."""
    ready, stop = threading.Event(), threading.Event()

    async def run() -> None:
        nc = await nats.connect(url)
        await nc.subscribe(subject, cb=on_message)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@contextmanager
def responder(url: str, subject: str, delay: float = 0.0):
    """A plain NATS service on ``subject`` answering ``echo:<payload>`` after ``delay`` seconds."""

    async def answer(msg) -> None:
        await asyncio.sleep(delay)
        await msg.respond(b"echo:" + msg.data)

    async def on_request(msg) -> None:  # answered concurrently, so a slow answer holds up no other
        asyncio.ensure_future(answer(msg))

    with subscribed(url, subject, on_request):
        yield


@contextmanager
def collector(url: str, subject: str):
    """A plain NATS subscriber on ``subject``: yields the list of payloads it received, in order."""
    received: list[bytes] = []

    async def on_message(msg) -> None:
        received.append(msg.data)

    with subscribed(url, subject, on_message):
        yield received


@contextmanager
def server_with(*args: str):
    """A nats-server started with extra command-line options (credentials)."""
    port = free_port()
    proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), *args])
    try:
        wait_for_port(port, 15, proc, None)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_thread_keeps_one_connection_and_gets_each_answer(nats_server):
    # Given a service and a thread's requests
    requests = DirectRequests([nats_server.url], name="test")
    with responder(nats_server.url, "svc.echo"):
        # When the thread asks twice
        first = requests.request("svc.echo", b"one", {}, timeout=5)
        second = requests.request("svc.echo", b"two", {"X-Test": "1"}, timeout=5)
        # Then each answer is its own, over one connection
        assert (first.data, second.data) == (b"echo:one", b"echo:two")
        assert requests._local.client.reused
        clients = list(requests._clients)
    assert len(clients) == 1
    requests.close()


def test_threads_get_connections_of_their_own(nats_server):
    # Given requests from four threads at once
    requests = DirectRequests([nats_server.url], name="test")
    answers: dict[int, bytes] = {}
    connections: set[int] = set()
    all_asked = threading.Barrier(4)

    def ask(n: int) -> None:
        answers[n] = requests.request("svc.threads", str(n).encode(), {}, timeout=5).data
        connections.add(id(requests._local.client.sock))
        all_asked.wait(10)  # every thread (and its connection) still alive when the others look

    with responder(nats_server.url, "svc.threads"):
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    # Then every thread got its own answer, each on its own connection
    assert answers == {n: f"echo:{n}".encode() for n in range(4)}
    assert len(connections) == 4


def test_pipelined_answers_land_in_order_of_the_requests(nats_server):
    # Given 200 requests sent at once
    requests = DirectRequests([nats_server.url], name="test")
    with responder(nats_server.url, "svc.many"):
        replies = requests.request_many([("svc.many", str(n).encode(), {}) for n in range(200)], timeout=10)
    # Then answer n is the answer to request n
    assert [r.data for r in replies] == [f"echo:{n}".encode() for n in range(200)]
    requests.close()


def test_a_late_answer_is_never_taken_for_the_next_requests(nats_server):
    # Given a slow service and a fast one
    requests = DirectRequests([nats_server.url], name="test")
    with responder(nats_server.url, "svc.slow", delay=0.5), responder(nats_server.url, "svc.fast"):
        # When a request times out
        with pytest.raises(NoAnswer, match="no answer"):
            requests.request("svc.slow", b"late", {}, timeout=0.2)
        # Then the next request gets its own answer, not the late one
        time.sleep(0.5)
        assert requests.request("svc.fast", b"now", {}, timeout=5).data == b"echo:now"


def test_no_responders_is_a_status_not_a_hang(nats_server):
    # Given nobody listening on a subject
    requests = DirectRequests([nats_server.url], name="test")
    # When it is asked
    started = time.monotonic()
    reply = requests.request("svc.nobody", b"?", {}, timeout=5)
    # Then the server says so at once with a 503 status
    assert reply.headers["Status"] == "503"
    assert time.monotonic() - started < 2


def test_a_connection_the_server_dropped_is_replaced_and_the_request_sent_again(tmp_path):
    # Given a thread whose connection was used, and a server restarted since
    server = NatsServer(store_dir=tmp_path / "nats").start()
    try:
        requests = DirectRequests([server.url], name="test")
        with responder(server.url, "svc.restart"):
            assert requests.request("svc.restart", b"before", {}, timeout=5).data == b"echo:before"
        server.stop()
        server.start()
        with responder(server.url, "svc.restart"):
            # When it asks again
            reply = requests.request("svc.restart", b"after", {}, timeout=5)
        # Then it asked on a new connection and got its answer
        assert reply.data == b"echo:after"
    finally:
        server.stop()


def test_an_unused_connection_is_replaced_before_the_server_finds_it_stale(nats_server, monkeypatch):
    # Given a connection unused for longer than the idle limit
    requests = DirectRequests([nats_server.url], name="test")
    with responder(nats_server.url, "svc.idle"):
        requests.request("svc.idle", b"1", {}, timeout=5)
        old = requests._local.client
        monkeypatch.setattr(direct, "IDLE_LIMIT", 0.0)
        # When the thread asks again
        assert requests.request("svc.idle", b"2", {}, timeout=5).data == b"echo:2"
    # Then the old connection was closed and a new one used
    assert requests._local.client is not old
    assert old._closed


def test_user_and_password_from_the_url():
    with server_with("--user", "alice", "--pass", "s3cret") as port:
        client = DirectClient.connect([f"nats://alice:s3cret@127.0.0.1:{port}"], name="t", timeout=5)
        assert client.request_many([("svc.none", b"", {})], 5)[0].headers["Status"] == "503"
        client.close()
        with pytest.raises(ConnectionFailed, match="Authorization Violation"):
            DirectClient.connect([f"nats://alice:wrong@127.0.0.1:{port}"], name="t", timeout=5)


def test_a_token_from_the_url():
    with server_with("--auth", "t0ken") as port:
        client = DirectClient.connect([f"nats://t0ken@127.0.0.1:{port}"], name="t", timeout=5)
        assert client.request_many([("svc.none", b"", {})], 5)[0].headers["Status"] == "503"
        client.close()


def test_the_first_server_that_answers_is_used(nats_server):
    # Given a list whose other entry has nothing listening
    dead = f"nats://127.0.0.1:{free_port()}"
    for _ in range(4):  # whichever one it starts from
        client = DirectClient.connect([dead, nats_server.url], name="t", timeout=2)
        assert client.server == nats_server.url.removeprefix("nats://")
        client.close()
    # And a list with none answering names them all
    with pytest.raises(ConnectionFailed, match="cannot connect to NATS"):
        DirectClient.connect([dead], name="t", timeout=2)


def test_jetstream_answers_come_back_as_json(nats_server):
    # Given JetStream's account info request
    requests = DirectRequests([nats_server.url], name="test")
    info = json.loads(requests.request("$JS.API.INFO", b"", {}, timeout=5).data)
    # Then the answer is JetStream's
    assert info["type"] == "io.nats.jetstream.api.v1.account_info_response"


def test_a_message_over_the_servers_limit_is_refused_before_it_is_sent(nats_server):
    # Given a thread's connection to a server that takes at most 1 MiB per message
    requests = DirectRequests([nats_server.url], name="test")
    with responder(nats_server.url, "svc.big"):
        assert requests.request("svc.big", b"small", {}, timeout=5).data == b"echo:small"
        connection = requests._local.client
        # When a bigger message is sent
        with pytest.raises(ConnectionFailed, match="over the server's limit"):
            requests.request("svc.big", b"x" * (2 * 1024 * 1024), {}, timeout=5)
        # Then it was refused here, and the connection still serves the thread
        assert requests.request("svc.big", b"again", {}, timeout=5).data == b"echo:again"
        assert requests._local.client is connection


def test_a_connection_that_only_publishes_answers_the_servers_pings(tmp_path):
    # Given a server that pings every 100 ms and drops a connection after two unanswered pings
    config = tmp_path / "nats.conf"
    config.write_text('ping_interval: "100ms"\nping_max: 2\n')
    with server_with("-c", str(config)) as port:
        url = f"nats://127.0.0.1:{port}"
        requests = DirectRequests([url], name="test")
        with collector(url, "acks.test") as received:
            # When a thread does nothing but publish (no request, so it never waits to read), every 150 ms
            requests.publish("acks.test", b"0", timeout=5)
            connection = requests._local.client
            for n in range(1, 20):
                time.sleep(0.15)
                requests.publish("acks.test", b"%d" % n, timeout=5)
            time.sleep(0.2)
        # Then every message arrived, over the one connection, which the server never found stale
        assert received == [b"%d" % n for n in range(20)]
        assert requests._local.client is connection and not connection._closed
