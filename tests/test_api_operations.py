"""``/v0/queues`` and ``/v0/workers`` on a real nats-server (and PostgreSQL where objects are involved).

The routes call what ``threeport queues`` and ``threeport workers`` call, so
these tests tell what an operator or the dashboard sees over HTTP: counts,
dead letters naming their object, retry, purge, live workers, and the
problems when the API has no queues or NATS does not answer. Every answer is
checked against the schema ``/openapi.json`` documents for it.
"""

from __future__ import annotations

import functools
import os

import dramatiq
import pytest
from dramatiq import Worker
from falcon import testing

from api.app import create_app
from api.openapi import openapi_document
from api.settings import Settings, hash_token
from cli.local_servers import free_port
from models import WorkloadDefinition
from workers.admin import QueueAdmin
from workers.heartbeats import Heartbeats, bucket_name
from workers.outbox_relay import publish_rows

from .conftest import nats_call
from .reconciling import reconciled, wait_for
from .test_cli_queues import bury, send
from .test_openapi import schema_validator

TOKEN = "operations-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


def client_of(app) -> testing.TestClient:
    return testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def client(broker):
    """The API with the test's broker as its queue admin (and its fast-path publisher)."""
    settings = Settings(token_hashes=frozenset({hash_token(TOKEN)}))
    app = create_app(settings, publish=functools.partial(publish_rows, broker), admin=QueueAdmin(broker))
    client = client_of(app)
    document = openapi_document(app)

    def answered(method: str, path: str, schema: str, **options) -> dict:
        """The JSON answer of a request that succeeds, checked against the documented ``schema``."""
        result = client.simulate_request(method, path, **options)
        assert result.status_code == 200, result.text
        schema_validator(document, schema).validate(result.json)
        return result.json

    client.answered = answered
    return client


def queue_stats(client, queue: str) -> dict:
    stats = {entry["queue"]: entry for entry in client.answered("GET", "/v0/queues", "QueueList")["items"]}
    return stats[queue]


def dead_letters(client, queue: str) -> list[dict]:
    return client.answered("GET", f"/v0/queues/{queue}/dead-letters", "DeadLetterList")["items"]


def test_a_dead_lettered_reconcile_names_its_object_and_a_retry_reconciles_it(database, client, broker, request):
    # Given a WorkloadDefinition created through the API, whose reconcile a worker failed for good
    created = client.simulate_post("/v0/workload-definitions", json={"name": "web", "yaml_document": YAML}).json
    bury(broker, "workloads", count=1)

    # When I list the queues
    stats = queue_stats(client, "workloads")

    # Then the workloads queue holds one dead letter and nothing else
    assert (stats["ready"], stats["delayed"], stats["in_flight"], stats["dead"]) == (0, 0, 0, 1)
    # And the dead letter names the reconcile actor, the object it was about and the error
    (letter,) = dead_letters(client, "workloads")
    assert (letter["actor"], letter["kind"], letter["object_id"]) == ("reconcile", "WorkloadDefinition", created["id"])
    assert (letter["reason"], letter["error"]) == ("failed", "ValueError: boom")

    # When workers run again and I retry it by id, with an id that is no dead letter
    request.getfixturevalue("reconciling")
    report = client.answered(
        "POST", "/v0/queues/workloads/dead-letters/retry", "RetryReport", json={"ids": [letter["id"], "no-such-id"]}
    )

    # Then it was retried, the other id reported missing
    assert report == {"queue": "workloads", "retried": [letter["id"]], "missing": ["no-such-id"], "failed": []}
    # And the object gets reconciled, and the dead letters are empty
    wait_for(lambda: reconciled(WorkloadDefinition, created["id"]))
    assert dead_letters(client, "workloads") == []


def test_a_failing_actor_that_exhausts_its_retries_is_dead_lettered_and_retry_all_runs_it_again(client, broker):
    # Given an actor that fails until it is fixed, allowed one retry, and a worker running it
    fixed, done = [], []

    def flaky(n: int) -> None:
        if not fixed:
            raise RuntimeError(f"not yet: {n}")
        done.append(n)

    dramatiq.actor(flaky, broker=broker, queue_name="flaky", max_retries=1, min_backoff=10, max_backoff=10)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        # When a message fails twice
        message_id = broker.actors["flaky"].send(7).message_id

        # Then it is a dead letter with the last error
        (letter,) = wait_for(lambda: dead_letters(client, "flaky"))
        assert (letter["id"], letter["args"], letter["kind"]) == (message_id, [7], None)
        assert letter["error"] == "RuntimeError: not yet: 7"

        # When the actor is fixed and every dead letter is retried
        fixed.append(True)
        report = client.answered("POST", "/v0/queues/flaky/dead-letters/retry", "RetryReport", json={"all": True})

        # Then the message runs to the end and leaves the dead letters
        assert report["retried"] == [message_id]
        wait_for(lambda: done == [7])
        assert queue_stats(client, "flaky")["dead"] == 0
    finally:
        worker.stop()


def test_purge_drops_dead_letters_by_id_or_all_and_leaves_ready_messages(client, broker):
    # Given three dead letters and then one ready message
    first, second, third = send("parked", 3)
    bury(broker, "parked", count=3)
    send("parked", 1)

    # When I drop the first by id, with the body
    dropped = client.answered("DELETE", "/v0/queues/parked/dead-letters", "PurgeReport", json={"ids": [first]})

    # Then only it went
    assert dropped == {"queue": "parked", "purged": 1, "ids": [first], "missing": []}
    assert [letter["id"] for letter in dead_letters(client, "parked")] == [second, third]

    # When I drop the second by id in the query, and then all of them
    by_query = client.answered("DELETE", f"/v0/queues/parked/dead-letters?id={second}&id=gone", "PurgeReport")
    purged = client.answered("DELETE", "/v0/queues/parked/dead-letters?all=true", "PurgeReport")

    # Then each says what it dropped, and the ready message is still there
    assert (by_query["ids"], by_query["missing"], purged["purged"]) == ([second], ["gone"], 1)
    stats = queue_stats(client, "parked")
    assert (stats["ready"], stats["dead"]) == (1, 0)


@pytest.mark.parametrize(
    "options",
    [{}, {"json": {"ids": ["a"], "all": True}}, {"json": {"ids": []}}, {"json": {"id": "a"}}, {"json": ["a"]}],
    ids=["nothing", "both", "no-ids", "unknown-key", "not-an-object"],
)
def test_a_retry_or_purge_must_name_its_dead_letters_or_all(client, broker, options):
    # Given a queue
    send("parked", 1)

    for method, path in (("POST", "/retry"), ("DELETE", "")):
        # When a retry or purge names no dead letters, both ways, or in a body of another shape
        result = client.simulate_request(method, f"/v0/queues/parked/dead-letters{path}", **options)

        # Then it is a 422 problem that says how to choose
        assert result.status_code == 422, result.text
        assert result.headers["content-type"] == "application/problem+json"
        assert result.json["title"] == "Invalid Choice"


def test_an_unknown_queue_is_a_404_and_a_bad_name_or_limit_a_422(client, broker):
    # Given one queue
    send("parked", 1)

    # Then a queue without a stream is not found, for every route
    for method, path in (("GET", ""), ("DELETE", "?all=true"), ("POST", "/retry")):
        options = {"json": {"all": True}} if method == "POST" else {}
        result = client.simulate_request(method, f"/v0/queues/nosuch/dead-letters{path}", **options)
        assert result.status_code == 404 and "no queue named 'nosuch'" in result.json["detail"]
    # And a name NATS cannot hold, or a limit out of range, is invalid
    assert client.simulate_get("/v0/queues/no*star/dead-letters").status_code == 422
    assert client.simulate_get("/v0/queues/parked/dead-letters", params={"limit": "0"}).status_code == 422
    for digits in ("\u00b2", "\u2460", "\uff11"):  # digits to str.isdigit, not all of them to int()
        assert client.simulate_get("/v0/queues/parked/dead-letters", params={"limit": digits}).status_code == 422
    # And a limit shows the oldest, saying there are more
    bury(broker, "parked", count=1)
    send("parked", 1)
    bury(broker, "parked", count=1)
    page = client.answered("GET", "/v0/queues/parked/dead-letters?limit=1", "DeadLetterList")
    assert (len(page["items"]), page["truncated"]) == (1, True)


@pytest.fixture
def heartbeat_bucket(broker, prefix):
    """The test's heartbeat bucket, deleted afterwards (its stream is not under the prefix)."""
    yield bucket_name(prefix)
    nats_call(broker, lambda js: js.delete_key_value(bucket_name(prefix)))


def test_workers_lists_a_worker_writing_heartbeats_until_it_stops(client, broker, heartbeat_bucket):
    # Given a worker on two queues that writes a heartbeat every half second
    broker.declare_queue("aws")
    broker.declare_queue("workloads")
    broker.add_middleware(Heartbeats(interval=0.5))
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()

    def listed() -> list[dict]:
        return client.answered("GET", "/v0/workers", "WorkerList")["items"]

    try:
        # When I list the workers once it is ready
        (entry,) = wait_for(lambda: [w for w in listed() if w["ready"]])
    finally:
        # (and then stop it)
        worker.stop()

    # Then it was there, this process, with its queues, nothing in flight and a fresh heartbeat
    assert (entry["pid"], entry["queues"], entry["in_flight"], entry["state"]) == (
        os.getpid(),
        ["aws", "workloads"],
        0,
        "running",
    )
    assert entry["age_seconds"] < 2
    # And once stopped it is gone at once
    assert listed() == []


def test_without_queues_the_routes_answer_503_saying_so():
    # Given an API made without a queue admin
    client = client_of(create_app(Settings(token_hashes=frozenset({hash_token(TOKEN)}))))

    for method, path in (
        ("GET", "/v0/queues"),
        ("GET", "/v0/queues/workloads/dead-letters"),
        ("DELETE", "/v0/queues/workloads/dead-letters?all=true"),
        ("POST", "/v0/queues/workloads/dead-letters/retry"),
        ("GET", "/v0/workers"),
    ):
        # When a queue or worker route is asked for
        result = client.simulate_request(method, path, json={"all": True} if method == "POST" else None)

        # Then it is a 503 problem that says the API runs without its queues
        assert result.status_code == 503, path
        assert result.headers["content-type"] == "application/problem+json"
        assert "without a connection to the queues" in result.json["detail"]


def test_unreachable_nats_is_a_503_naming_the_server(make_broker):
    # Given an API whose queues are on a server that does not answer
    url = f"nats://127.0.0.1:{free_port()}"
    app = create_app(
        Settings(token_hashes=frozenset({hash_token(TOKEN)})),
        admin=QueueAdmin(make_broker(url=url, connect_timeout=1.0)),
    )

    # When the queues are asked for
    result = client_of(app).simulate_get("/v0/queues")

    # Then it is a 503 that names the server
    assert result.status_code == 503
    assert result.json["title"] == "Queues Unavailable"
    assert url in result.json["detail"]
