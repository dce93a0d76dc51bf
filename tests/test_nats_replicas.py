"""``THREEPORT_NATS_REPLICAS``: how many replicas the streams and KV buckets of the API and the workers get.

On the 3-node cluster every stream and bucket the broker, the locks and the
heartbeats make has the count asked for, an existing one with fewer is raised
to it and one with more is never lowered; on one server the default stays 1.
The setting reaches ``threeport api`` and ``threeport worker``, each run as
its own process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import dramatiq
import nats.errors
import nats.js.errors
import pytest
from dramatiq import Worker
from dramatiq.message import Message

from api.settings import Settings
from cli.local_servers import free_port
from workers.heartbeats import Heartbeats, bucket_name
from workers.locks import LockManager

from .conftest import nats_call
from .postgres import ENCRYPTION_KEY
from .reconciling import wait_for

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "replicas-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


def replicas(broker, stream: str) -> int:
    """The replica count JetStream reports for ``stream``."""
    return nats_call(broker, lambda js: js.stream_info(stream)).config.num_replicas


def exists(broker, stream: str) -> bool:
    """Whether ``stream`` is there and answers (a new replicated stream answers once it has elected its leader)."""
    try:
        nats_call(broker, lambda js: js.stream_info(stream))
    except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
        return False
    return True


def the_brokers_streams(broker, queue: str) -> list[str]:
    return [broker.names.stream(queue), broker.names.dead_stream, broker.names.presence_stream]


@contextlib.contextmanager
def running_worker(broker, queue: str) -> Iterator[list]:
    """A Dramatiq worker with heartbeats whose actor ``record`` on ``queue`` keeps its arguments, until the block ends.

    It yields the arguments recorded, once its consumer pulls (the queue's streams are made) and its
    first heartbeat is written (the bucket is made).
    """
    recorded: list = []
    heartbeats = Heartbeats(interval=1.0)
    broker.add_middleware(heartbeats)
    dramatiq.actor(recorded.append, actor_name="record", queue_name=queue, broker=broker)
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        wait_for(lambda: heartbeats.readiness()[0], timeout=30)
        heartbeats.beat()
        yield recorded
    finally:
        worker.stop()


@pytest.fixture
def on_cluster(nats_cluster, make_broker, prefix):
    """Brokers on the 3-node cluster under the test's prefix; their streams and the test's buckets are deleted after.

    By name: listing the streams waits on any that are still moving onto new peers.
    """
    made = []

    def make(**options):
        broker = make_broker(url=",".join(nats_cluster.urls), **options)
        made.append(broker)
        return broker

    yield make
    streams = {f"KV_{bucket_name(prefix)}", f"KV_{prefix}_locks", "KV_locks"}
    for broker in made:
        streams.update(s for queue in broker.get_declared_queues() for s in the_brokers_streams(broker, queue))
    for stream in streams if made else ():
        with contextlib.suppress(nats.js.errors.NotFoundError):
            nats_call(made[0], lambda js, stream=stream: js.delete_stream(stream))


# On the cluster ------------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_with_three_replicas_every_stream_and_bucket_of_a_worker_has_three(on_cluster, prefix):
    # Given a broker on the 3-node cluster with replicas=3, and a lock manager on it as the actor builds one
    broker = on_cluster(replicas=3)
    locks = LockManager(connection=broker.connection, bucket=f"{prefix}_locks", replicas=broker.replicas)

    # When a worker with heartbeats consumes a queue and an object's lock is taken
    with running_worker(broker, "replicated"):
        assert locks.acquire("workload.1") is not None

        # Then the queue's stream, the dead letters, the consumers' presence, the heartbeat bucket
        # and the lock bucket each have 3 replicas
        made = [*the_brokers_streams(broker, "replicated"), f"KV_{bucket_name(prefix)}", f"KV_{prefix}_locks"]
        assert {stream: replicas(broker, stream) for stream in made} == dict.fromkeys(made, 3)


@pytest.mark.cluster
def test_streams_made_with_one_replica_are_raised_to_three_and_never_lowered(on_cluster, prefix, caplog):
    # Given the streams and buckets of a deployment that ran with one replica, and a message left on its queue
    before = on_cluster(replicas=1)
    with running_worker(before, "upgraded"):
        assert LockManager(connection=before.connection, bucket=f"{prefix}_locks").acquire("workload.1")
    made = [*the_brokers_streams(before, "upgraded"), f"KV_{bucket_name(prefix)}", f"KV_{prefix}_locks"]
    assert {replicas(before, stream) for stream in made} == {1}
    before.enqueue(Message(queue_name="upgraded", actor_name="record", args=("left",), kwargs={}, options={}))

    # When a worker started with replicas=3 uses them
    after = on_cluster(replicas=3)
    caplog.set_level(logging.INFO, logger="workers.replicas")
    with running_worker(after, "upgraded") as recorded:
        assert LockManager(connection=after.connection, bucket=f"{prefix}_locks", replicas=3).acquire("workload.2")

        # Then each has 3 replicas now, and the log says which were raised
        assert {stream: replicas(after, stream) for stream in made} == dict.fromkeys(made, 3)
        raised = {r.args[0] for r in caplog.records if r.msg.startswith("Raising the replicas")}
        assert raised == set(made)

    # When a process started without the setting uses them again
    again = on_cluster()
    with running_worker(again, "upgraded") as recorded_again:
        assert LockManager(connection=again.connection, bucket=f"{prefix}_locks").acquire("workload.3")

        # Then none is lowered
        assert {stream: replicas(again, stream) for stream in made} == dict.fromkeys(made, 3)
        # And the message left before the raise is processed once (the queue answers once its peers caught up)
        assert wait_for(lambda: recorded + recorded_again, timeout=30) == ["left"]


@pytest.mark.cluster
def test_more_replicas_than_the_cluster_has_leave_an_existing_bucket_working_with_a_warning(on_cluster, prefix, caplog):
    # Given a lock bucket with one replica on the 3-node cluster
    broker = on_cluster()
    assert LockManager(connection=broker.connection, bucket=f"{prefix}_locks").acquire("workload.1")

    # When a lock manager asking for 5 replicas takes a lock in it
    lease = LockManager(connection=broker.connection, bucket=f"{prefix}_locks", replicas=5).acquire("workload.2")

    # Then the lock is taken, the bucket keeps its one replica, and a warning says why
    assert lease is not None and replicas(broker, f"KV_{prefix}_locks") == 1
    [warning] = [r for r in caplog.records if r.name == "workers.replicas" and r.levelno == logging.WARNING]
    assert f"KV_{prefix}_locks still has 1 replica(s): raising them to 5" in warning.getMessage()


# On one server -------------------------------------------------------------------------------------------


def test_by_default_every_stream_and_bucket_has_one_replica(make_broker, prefix):
    # Given a broker, its worker's heartbeats and a lock manager, none told a replica count, on one server
    broker = make_broker()
    locks = LockManager(connection=broker.connection, bucket=f"{prefix}_locks")
    try:
        # When the worker runs and a lock is taken
        with running_worker(broker, "single"):
            assert locks.acquire("workload.1") is not None

            # Then every stream and bucket they made has one replica
            made = [*the_brokers_streams(broker, "single"), f"KV_{bucket_name(prefix)}", f"KV_{prefix}_locks"]
            assert {stream: replicas(broker, stream) for stream in made} == dict.fromkeys(made, 1)
    finally:
        locks.delete_bucket()
        nats_call(broker, lambda js: js.delete_key_value(bucket_name(prefix)))


# The setting -----------------------------------------------------------------------------------------------


def test_the_api_settings_read_the_replica_count_from_the_environment():
    # Given environments with and without THREEPORT_NATS_REPLICAS, then the settings carry it, 1 by default
    assert Settings.from_env({"THREEPORT_NATS_REPLICAS": "3"}).nats_replicas == 3
    assert Settings.from_env({}).nats_replicas == Settings().nats_replicas == 1
    # and a count that is not one is refused, naming the variable
    for wrong in ("0", "three", "-1"):
        with pytest.raises(ValueError, match="THREEPORT_NATS_REPLICAS"):
            Settings.from_env({"THREEPORT_NATS_REPLICAS": wrong})


@contextlib.contextmanager
def threeport(*argv: str, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """``threeport ARGV`` as its own process, stopped (SIGTERM, then SIGKILL) when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.cluster
def test_the_setting_reaches_threeport_api_and_threeport_worker(
    on_cluster, nats_cluster, database, empty_database_url, prefix, monkeypatch
):
    # Given `threeport api --nats-replicas 3` and `threeport worker` with THREEPORT_NATS_REPLICAS=3, both on
    # the cluster and a migrated database, each under its own prefix
    monkeypatch.delenv("THREEPORT_NATS_REPLICAS", raising=False)
    api_broker, worker_broker = on_cluster(prefix=f"{prefix}a"), on_cluster()
    port = free_port()
    env = {
        "DATABASE_URL": empty_database_url,
        "NATS_URL": ",".join(nats_cluster.urls),
        "THREEPORT_API_TOKEN": TOKEN,
        "THREEPORT_ENCRYPTION_KEY": ENCRYPTION_KEY,
    }
    api_argv = ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--nats-replicas", "3"]
    worker_env = {**env, "THREEPORT_PREFIX": prefix, "THREEPORT_NATS_REPLICAS": "3"}
    with (
        threeport(*api_argv, env={**env, "THREEPORT_PREFIX": f"{prefix}a"}),
        threeport("worker", "--queues", "workloads", "--threads", "1", env=worker_env) as worker,
    ):
        # When an object is created through the API, which publishes its reconcile on its queue
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=20)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v0/workload-definitions",
            data=json.dumps({"name": "web", "yaml_document": YAML}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201

        # Then the queue's stream and the dead letters' it made have 3 replicas
        made_by_api = [api_broker.names.stream("workloads"), api_broker.names.dead_stream]
        wait_for(lambda: all(exists(api_broker, s) for s in made_by_api), timeout=10)
        assert [replicas(api_broker, s) for s in made_by_api] == [3, 3]

        # When the worker is ready: consuming, writing heartbeats, its relay holding the leader lock
        assert worker.stdout.readline().startswith("worker ready")
        made_by_worker = [*the_brokers_streams(worker_broker, "workloads"), f"KV_{bucket_name(prefix)}", "KV_locks"]
        wait_for(lambda: all(exists(worker_broker, s) for s in made_by_worker), timeout=10)

        # Then its queue's stream, the dead letters', the presence stream and both buckets have 3 replicas
        assert {s: replicas(worker_broker, s) for s in made_by_worker} == dict.fromkeys(made_by_worker, 3)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
