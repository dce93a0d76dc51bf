"""The generic object routes over a real database, publishing to a real NATS."""

from __future__ import annotations

import functools
import threading

import pytest
from falcon import testing

from api.app import create_app
from api.settings import Settings, hash_token
from cli.local_servers import free_port
from models import Outbox
from workers.outbox_relay import publish_rows

TOKEN = "objects-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


@pytest.fixture
def client(database, broker):
    app = create_app(
        Settings(token_hashes=frozenset({hash_token(TOKEN)})), publish=functools.partial(publish_rows, broker)
    )
    return testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def create(client, name="web", yaml=YAML):
    return client.simulate_post("/v0/workload-definitions", json={"name": name, "yaml_document": yaml})


def test_create_stores_the_object_and_publishes_its_reconcile_at_once(client, broker):
    # When a WorkloadDefinition is created
    result = create(client)

    # Then it is stored at generation 1 with an ETag and a Location
    assert result.status_code == 201
    body = result.json
    assert (body["kind"], body["name"], body["generation"], body["observed_generation"]) == (
        "WorkloadDefinition",
        "web",
        1,
        0,
    )
    assert result.headers["etag"] == '"1"'
    assert result.headers["location"] == f"/v0/workload-definitions/{body['id']}"
    # And its reconcile message is on the workloads queue, the outbox already empty
    assert broker.get_queue_message_counts("workloads") == (1, 0, 0)
    assert Outbox.select().count() == 0


def test_a_failed_fast_path_publish_keeps_the_outbox_row_and_the_request_succeeds(database, make_broker):
    # Given an API whose broker cannot reach NATS
    dead = make_broker(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=1.0)
    app = create_app(
        Settings(token_hashes=frozenset({hash_token(TOKEN)})), publish=functools.partial(publish_rows, dead)
    )
    client = testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})

    # When an object is created, then the request still succeeds and the row waits for the relay
    assert create(client).status_code == 201
    assert Outbox.select().count() == 1


def test_get_list_and_filters(client):
    ids = [create(client, name=f"app-{n}").json["id"] for n in range(5)]

    assert client.simulate_get(f"/v0/workload-definitions/{ids[2]}").json["name"] == "app-2"
    page = client.simulate_get("/v0/workload-definitions", params={"limit": "2"}).json
    assert [o["name"] for o in page["items"]] == ["app-0", "app-1"]
    rest = client.simulate_get("/v0/workload-definitions", params={"limit": "10", "after": page["next"]}).json
    assert [o["name"] for o in rest["items"]] == ["app-2", "app-3", "app-4"] and rest["next"] is None
    named = client.simulate_get("/v0/workload-definitions", params={"name": "app-3"}).json
    assert [o["id"] for o in named["items"]] == [ids[3]]
    assert client.simulate_get("/workload-definitions/versions").json == {
        "kind": "WorkloadDefinition",
        "versions": ["v0"],
    }


def test_patch_bumps_generation_and_if_match_guards_it(client, broker):
    created = create(client).json
    url = f"/v0/workload-definitions/{created['id']}"

    # When the spec changes with the right If-Match
    patched = client.simulate_patch(url, json={"yaml_document": YAML + "---\n"}, headers={"If-Match": '"1"'})

    # Then generation and resource_version move, and a second reconcile is queued
    assert patched.status_code == 200
    assert (patched.json["generation"], patched.json["resource_version"]) == (2, 2)
    assert broker.get_queue_message_counts("workloads")[0] == 2
    # And a stale If-Match is refused with 412
    stale = client.simulate_patch(url, json={"yaml_document": YAML}, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"


def test_concurrent_patches_with_one_if_match_let_exactly_one_win(client):
    url = f"/v0/workload-definitions/{create(client).json['id']}"
    results = []

    def patch(n):
        results.append(
            client.simulate_patch(url, json={"yaml_document": YAML + f"# {n}\n"}, headers={"If-Match": '"1"'})
        )

    threads = [threading.Thread(target=patch, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [200] + [412] * 5


def test_put_replaces_and_needs_every_user_field(client):
    url = f"/v0/workload-definitions/{create(client).json['id']}"
    assert client.simulate_put(url, json={"name": "web"}).status_code == 422
    replaced = client.simulate_put(url, json={"name": "web2", "yaml_document": YAML})
    assert replaced.status_code == 200 and replaced.json["name"] == "web2"


def test_interrupting_reconciliation_is_a_new_generation_that_a_put_may_leave_out(client, broker):
    # Given an object
    url = f"/v0/workload-definitions/{create(client).json['id']}"

    # When its reconciliation is interrupted
    interrupted = client.simulate_patch(url, json={"interrupt_reconciliation": True})

    # Then that is a new generation, with its reconcile message
    assert interrupted.status_code == 200
    assert (interrupted.json["interrupt_reconciliation"], interrupted.json["generation"]) == (True, 2)
    assert broker.get_queue_message_counts("workloads")[0] == 2

    # And a PUT without the flag keeps it, while one with a non-boolean is refused
    replaced = client.simulate_put(url, json={"name": "web", "yaml_document": YAML + "data: {}\n"})
    assert replaced.status_code == 200 and replaced.json["interrupt_reconciliation"] is True
    refused = client.simulate_patch(url, json={"interrupt_reconciliation": "yes"})
    assert refused.status_code == 422 and "interrupt_reconciliation" in refused.json["detail"]


def test_delete_answers_202_and_schedules_deletion(client, broker):
    created = create(client).json
    result = client.simulate_delete(f"/v0/workload-definitions/{created['id']}")
    assert result.status_code == 202
    assert result.json["deletion_scheduled"] is not None
    assert result.json["generation"] == 2
    assert broker.get_queue_message_counts("workloads")[0] == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v0/workload-definitions", {"name": "x", "yaml_document": "a", "bogus": 1}, 422),
        ("POST", "/v0/workload-definitions", {"name": "x", "yaml_document": "a", "generation": 9}, 422),
        ("POST", "/v0/workload-definitions", {"name": "x", "yaml_document": 5}, 422),
        ("POST", "/v0/workload-definitions", ["not", "an", "object"], 422),
        ("GET", "/v0/workload-definitions/00000000-0000-0000-0000-000000000000", None, 404),
        ("GET", "/v0/workload-definitions/not-a-uuid", None, 404),
        ("GET", "/v0/workload-definitions?limit=0", None, 422),
        ("GET", "/v0/workload-definitions?limit=abc", None, 422),
        ("GET", "/v0/workload-definitions?after=garbage", None, 422),
        ("GET", "/v0/workload-definitions?no_such_field=1", None, 422),
        ("GET", "/v0/workload-definitions?limit=1&limit=2", None, 422),
        ("GET", "/v0/workload-definitions?after=a&after=b", None, 422),
        ("GET", "/v0/workload-definitions?name=a&name=b", None, 422),
        ("GET", "/v0/workload-definitions?name=a%00", None, 400),
        ("POST", "/v0/workload-definitions", {"name": "x\u0000", "yaml_document": "a"}, 422),
    ],
)
def test_bad_input_gets_a_clear_4xx_problem(client, method, path, body, status):
    path, _, query = path.partition("?")
    result = client.simulate_request(method, path, query_string=query or None, json=body)
    assert result.status_code == status
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["status"] == status and result.json["detail"]


def test_a_duplicate_name_is_a_409(client):
    assert create(client).status_code == 201
    duplicate = create(client)
    assert duplicate.status_code == 409
    assert "web" in duplicate.json["detail"]
