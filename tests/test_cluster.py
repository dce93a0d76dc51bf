"""A 3-node JetStream cluster with replicated streams: losing a server loses no confirmed message."""

from __future__ import annotations

import threading
import time

import pytest
from dramatiq.errors import BrokerError
from dramatiq.message import Message

from workers.direct import DirectRequests

from .conftest import nats_call

pytestmark = pytest.mark.cluster


def test_killing_one_server_under_load_loses_no_confirmed_message(nats_cluster, make_broker):
    # Given a broker on a 3-node cluster with 3 replicas per stream
    broker = make_broker(url=",".join(nats_cluster.urls), replicas=3, publish_timeout=2.0, ack_wait=10.0)
    broker.declare_queue("replicated")
    confirmed: list[int] = []
    stop = threading.Event()

    def publish() -> None:
        n = 0
        while not stop.is_set():
            message = Message(queue_name="replicated", actor_name="noop", args=(n,), kwargs={}, options={})
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # retry the same publish (same Nats-Msg-Id) until confirmed
                try:
                    broker.enqueue(message, msg_id=f"m{n}")
                    confirmed.append(n)
                    break
                except BrokerError:
                    time.sleep(0.1)
            n += 1

    # When messages are published continuously and the stream's leader is killed with SIGKILL
    publisher = threading.Thread(target=publish)
    publisher.start()
    time.sleep(1.5)
    info = nats_call(broker, lambda js: js.stream_info(broker.names.stream("replicated")))
    assert len(info.cluster.replicas) == 2
    victim = nats_cluster.server_named(info.cluster.leader)
    victim.kill()
    time.sleep(4)
    stop.set()
    publisher.join(60)
    try:
        assert len(confirmed) > 100

        # Then every confirmed message is delivered from the surviving servers
        consumer = retry_until(lambda: broker.consume("replicated", prefetch=500, timeout=1000), seconds=30)
        received: set[int] = set()
        deadline = time.monotonic() + 60
        while not set(confirmed) <= received and time.monotonic() < deadline:
            message = next(consumer)
            if message is not None:
                received.add(message.args[0])
                consumer.ack(message)
        consumer.close()
        assert set(confirmed) - received == set()
    finally:
        victim.start()
        nats_cluster.wait_for_jetstream()


def retry_until(fn, *, seconds: float):
    """Call ``fn`` until it stops raising broker errors (a new leader may take a few seconds)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except BrokerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_threads_learn_the_clusters_other_servers_from_the_one_they_were_given(nats_cluster):
    # Given direct requests configured with one server of the three
    first, *others = nats_cluster.urls
    requests = DirectRequests([first], name="test")
    # When a thread sends a request
    requests.request("$JS.API.INFO", b"", {}, timeout=5)
    # Then it knows the other two, for when the first one goes away
    assert set(others) <= set(requests.servers)
    requests.close()
