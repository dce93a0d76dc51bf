"""Fixtures that start real servers: a nats-server with JetStream for the
session, a 3-node cluster on demand, and a broker per test under its own
prefix so tests never see each other's streams."""

from __future__ import annotations

import uuid

import dramatiq
import pytest
from dramatiq import Worker

from cli.local_servers import NatsCluster, NatsServer
from workers import bridge
from workers.admin import QueueAdmin
from workers.broker import JetStreamBroker


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = NatsServer(store_dir=tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory):
    cluster = NatsCluster(base_dir=tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_broker(nats_server, prefix):
    """Build brokers on the session server; every stream they make is deleted afterwards."""
    made: list[JetStreamBroker] = []

    def make(**options) -> JetStreamBroker:
        options.setdefault("prefix", prefix)
        options.setdefault("ack_wait", 2.0)
        url = options.pop("url", nats_server.url)
        broker = JetStreamBroker(url, **options)
        broker.emit_after("process_boot")
        made.append(broker)
        return broker

    yield make
    for broker in made:
        try:
            delete_streams(broker)
        finally:
            broker.close()


@pytest.fixture
def broker(make_broker):
    broker = make_broker()
    dramatiq.set_broker(broker)
    return broker


@pytest.fixture
def worker(broker):
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


def delete_streams(broker: JetStreamBroker) -> None:
    """Delete every stream under the broker's prefix."""

    try:
        QueueAdmin(broker).delete_streams()
    except Exception:
        pass


def nats_call(broker: JetStreamBroker, fn):
    """Run ``fn(js)`` on the broker's connection (for raw JetStream access in tests)."""

    async def call():
        return await fn(await broker.connection.jetstream())

    return bridge.run(call(), 10)


from .aws import aws_endpoint, moto_server, start_worker  # noqa: E402, F401
from .aws_faults import aws_proxy  # noqa: E402, F401
from .kube import kube, kube_api, kube_tls, pytest_addoption, real_kubeconfig  # noqa: E402, F401
from .postgres import database, empty_database_url, postgres_server  # noqa: E402, F401
from .reconciling import locks, reconciling  # noqa: E402, F401
