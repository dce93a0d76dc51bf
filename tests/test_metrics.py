"""Prometheus metrics after real traffic: the API's /metrics, reconciles, queues, lock contention, the outbox,
and a worker process's exporter with its probes."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import dramatiq
import pytest
from dramatiq import Worker
from falcon import testing
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.settings import Settings, hash_token
from cli.local_servers import free_port
from models import WorkloadDefinition, store
from tasks.actor import declare_actors
from workers.heartbeats import bucket_name
from workers.metrics import MessageMetrics, OutboxCollector, QueueCollector, metrics_registry
from workers.outbox_relay import publish_rows

from .conftest import nats_call
from .reconciling import reconciled, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"
MISSING_ID = "00000000-0000-0000-0000-000000000000"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def local_metrics(*collectors) -> str:
    """This process's metrics, as a worker's exporter serves them (with the collectors it reads when scraped)."""
    return generate_latest(metrics_registry(*collectors)).decode()


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def client(database, broker):
    app = create_app(
        Settings(token_hashes=frozenset({hash_token(TOKEN)})), publish=functools.partial(publish_rows, broker)
    )
    return testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def reconciling_with_metrics(database, broker, locks):
    """The reconcile actor on a broker with the metrics middleware, and a worker running it."""
    broker.add_middleware(MessageMetrics())
    declare_actors(broker, locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


def test_api_requests_are_counted_by_route_template_and_status(client):
    # Given the metrics before any traffic (other tests of the session may have counted some)
    before = client.simulate_get("/metrics", headers={"Authorization": ""}).text
    collection, item = "/v0/workload-definitions", "/v0/workload-definitions/{object_id}"

    # When an object is created and read, a missing one is asked for, and a bad body is sent
    created = client.simulate_post(collection, json={"name": "web", "yaml_document": YAML})
    assert created.status_code == 201
    assert client.simulate_get(f"{collection}/{created.json['id']}").status_code == 200
    assert client.simulate_get(f"{collection}/{MISSING_ID}").status_code == 404
    assert client.simulate_post(collection, json={"name": "x", "yaml_document": 5}).status_code == 422

    # Then /metrics answers without a token, in Prometheus' text format
    result = client.simulate_get("/metrics", headers={"Authorization": ""})
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/plain")
    after = result.text

    # And each request moved its counter, labelled by the route template and the status
    def moved(method: str, route: str, status: str) -> float:
        name = "threeport_http_requests_total"
        return value(after, name, method=method, route=route, status=status) - value(
            before, name, method=method, route=route, status=status
        )

    assert moved("POST", collection, "201") == 1
    assert moved("GET", item, "200") == 1
    assert moved("GET", item, "404") == 1
    assert moved("POST", collection, "422") == 1
    # And the latency histogram counted them by method and route
    assert value(after, "threeport_http_request_duration_seconds_count", method="GET", route=item) >= 2

    # And no raw id ever became a label value
    assert created.json["id"] not in after and MISSING_ID not in after


def test_unmatched_paths_are_counted_as_other(client):
    # When paths that no route matches are requested
    for n in range(3):
        client.simulate_get(f"/no/such/path/{n}")

    # Then they share the route label "other", and the paths are nowhere in the metrics
    text = client.simulate_get("/metrics").text
    assert value(text, "threeport_http_requests_total", method="GET", route="other", status="404") >= 3
    assert "/no/such/path" not in text


def test_a_reconcile_moves_the_reconcile_and_message_counters(broker, reconciling_with_metrics):
    # Given the counters before
    kind, reconciled_labels = WorkloadDefinition.kind, {"kind": "WorkloadDefinition", "result": "reconciled"}
    before = local_metrics()

    # When a WorkloadDefinition is created, published and reconciled by the worker
    written = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
    publish_rows(broker, written.outbox)
    wait_for(lambda: reconciled(WorkloadDefinition, written.obj.id))

    # Then the reconcile was counted as reconciled and timed
    def moved(name: str, **labels: str) -> float:
        return value(local_metrics(), name, **labels) - value(before, name, **labels)

    assert wait_for(lambda: moved("threeport_reconcile_total", **reconciled_labels)) == 1
    assert moved("threeport_reconcile_duration_seconds_count", kind=kind) >= 1
    # And Dramatiq's message metrics moved for the workloads queue, none in progress any more
    labels = {"queue_name": WorkloadDefinition.queue, "actor_name": "reconcile"}
    assert WorkloadDefinition.queue == "workloads"
    assert wait_for(lambda: moved("dramatiq_messages_total", **labels)) >= 1
    assert moved("dramatiq_message_duration_milliseconds_count", **labels) >= 1
    assert value(local_metrics(), "dramatiq_messages_inprogress", **labels) == 0


def test_queue_gauges_show_a_ready_message_then_a_dead_letter(broker):
    # Given an actor that always fails, with no retries, and no worker yet
    @dramatiq.actor(queue_name="gauged", max_retries=0)
    def always_fails():
        raise ValueError("boom")

    queue = QueueCollector(broker)

    def gauge(state: str) -> float:
        return value(local_metrics(queue), "threeport_queue_messages", queue="gauged", state=state)

    # When a message is sent
    always_fails.send()

    # Then the queue's gauges, read from NATS when scraped, show it ready and nothing dead
    assert gauge("ready") == 1 and gauge("dead") == 0
    assert gauge("delayed") == 0 and gauge("in_flight") == 0

    # When a worker runs it and it fails for good
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        # Then it is a dead letter and no longer ready
        assert wait_for(lambda: gauge("dead") == 1)
        assert gauge("ready") == 0 and gauge("in_flight") == 0
        assert value(local_metrics(queue), "threeport_queue_consumers", queue="gauged") == 1
    finally:
        worker.stop()


def test_lock_contention_is_counted_while_another_holds_the_objects_lock(broker, locks, reconciling_with_metrics):
    # Given a WorkloadDefinition whose lock someone else holds
    written = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
    lease = locks.acquire(f"WorkloadDefinition.{written.obj.id}", ttl=30)
    before = value(local_metrics(), "threeport_lock_contention_total", kind="WorkloadDefinition")

    # When it is published for reconciling
    publish_rows(broker, written.outbox)

    # Then the reconcile finds the lock held and counts it, by kind (and comes back later)
    def contended() -> float:
        return value(local_metrics(), "threeport_lock_contention_total", kind="WorkloadDefinition") - before

    assert wait_for(contended) >= 1

    # And once the lock is released it reconciles
    lease.release()
    wait_for(lambda: reconciled(WorkloadDefinition, written.obj.id))


def test_an_unpublished_outbox_row_shows_in_the_backlog_and_its_age(database, broker):
    # Given an object whose outbox row nobody published
    written = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
    outbox = OutboxCollector()

    # Then the outbox gauges count that row, and its age grows
    first = local_metrics(outbox)
    assert value(first, "threeport_outbox_rows") == 1
    wait_for(lambda: value(local_metrics(outbox), "threeport_outbox_oldest_age_seconds") >= 0.2)

    # When it is published
    publish_rows(broker, written.outbox)

    # Then the backlog is empty and its age 0
    after = local_metrics(outbox)
    assert value(after, "threeport_outbox_rows") == 0
    assert value(after, "threeport_outbox_oldest_age_seconds") == 0


def test_a_worker_process_serves_metrics_and_probes(database, empty_database_url, nats_server, broker, prefix):
    # Given `threeport worker --metrics-port` on the test's database and NATS prefix
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--threads", "2", "--metrics-port", str(port), "--prefix", prefix],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": empty_database_url, "NATS_URL": nats_server.url},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().startswith("worker ready")

        # When an object is created and published for it to reconcile
        written = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
        publish_rows(broker, written.outbox)
        wait_for(lambda: reconciled(WorkloadDefinition, written.obj.id))

        # Then its /metrics over HTTP shows the reconcile and the message it handled
        labels = {"queue_name": "workloads", "actor_name": "reconcile"}

        def scrape_once_handled() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            return text if value(text, "dramatiq_messages_total", **labels) else None

        text = wait_for(scrape_once_handled)
        assert value(text, "threeport_reconcile_total", kind="WorkloadDefinition", result="reconciled") == 1
        # And the queues' gauges and the outbox's, read when scraped
        gauges = samples(text)
        for state in ("ready", "delayed", "in_flight", "dead"):
            assert ("threeport_queue_messages", frozenset({"queue": "workloads", "state": state}.items())) in gauges
        assert value(text, "threeport_queue_consumers", queue="workloads") >= 1
        assert ("threeport_outbox_rows", frozenset()) in gauges

        # And its probes answer: alive, and ready while its consumers pull
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        assert "workloads" in json.loads(body)["queues"]
    finally:
        # And it still stops cleanly on SIGTERM
        proc.terminate()
        assert proc.wait(30) == 0
        nats_call(broker, lambda js: js.delete_key_value(bucket_name(prefix)))
