"""Extension kinds registered at runtime: served at once, validated by their schema, namespaced, evolvable.

Every test runs API apps over a real PostgreSQL; two apps on one database
stand for two API replicas (each has its own catalog of extension kinds).
"""

from __future__ import annotations

import pytest
from falcon import testing
from openapi_spec_validator import validate

from api.app import create_app
from api.settings import Settings, hash_token
from models import Outbox, db
from models.extension_kinds import EXTENSION_ACTOR, table_name

TOKEN = "extensions-test-token"

FANCY_SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "minLength": 1, "description": "The container image."},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "ratio": {"type": "number"},
        "public": {"type": "boolean"},
        "ports": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535}},
    },
    "required": ["image"],
}


def fancy_extension(domain="acmecorp.com", version="v1", schema=None, **fields):
    kind = {"kind": "FancyWorkload", "schema": schema or FANCY_SCHEMA}
    return {"domain": domain, "version": version, "kinds": [kind], **fields}


@pytest.fixture
def make_client(database):
    """An API replica over the test's database (each app its own catalog)."""

    def make() -> testing.TestClient:
        app = create_app(Settings(token_hashes=frozenset({hash_token(TOKEN)})))
        return testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})

    return make


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def registered(client):
    answer = client.simulate_post("/v0/extensions", json=fancy_extension())
    assert answer.status_code == 201, answer.text
    return answer.json


def outbox_rows(kind: str) -> list[Outbox]:
    return list(Outbox.select().where(Outbox.kind == kind).order_by(Outbox.created_at))


def test_a_registered_kind_is_served_at_once_with_the_whole_lifecycle(client, registered):
    # Given a registration, read back with its defaults filled in
    assert registered["queue"] == "ext.acmecorp.com"
    assert registered["kinds"][0]["plural"] == "fancy-workloads" and registered["kinds"][0]["reconciled"] is True

    # When an object is created under the extension's path, without any restart
    created = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "web", "image": "nginx:1.27"})

    # Then it is stored with the lifecycle fields, its location and its ETag
    assert created.status_code == 201, created.text
    obj = created.json
    assert obj["kind"] == "acmecorp.com/v1/FancyWorkload"
    assert (obj["image"], obj["replicas"], obj["generation"], obj["reconciled"]) == ("nginx:1.27", 1, 1, False)
    assert created.headers["location"] == f"/acmecorp.com/v1/fancy-workloads/{obj['id']}"
    assert created.headers["etag"] == f'"{obj["resource_version"]}"'
    # And an outbox row asks the extension's controller, on the extension's queue, to reconcile it
    [row] = outbox_rows(obj["kind"])
    assert (row.queue, row.actor, row.generation) == ("ext.acmecorp.com", EXTENSION_ACTOR, 1)
    assert row.payload == {"kind": "acmecorp.com/v1/FancyWorkload", "object_id": obj["id"], "generation": 1}

    # When it is read, changed, changed with a stale If-Match, listed with a filter, and deleted
    fetched = client.simulate_get(f"/acmecorp.com/v1/fancy-workloads/{obj['id']}")
    patched = client.simulate_patch(
        f"/acmecorp.com/v1/fancy-workloads/{obj['id']}",
        json={"replicas": 3},
        headers={"If-Match": fetched.headers["etag"]},
    )
    stale = client.simulate_patch(
        f"/acmecorp.com/v1/fancy-workloads/{obj['id']}", json={"replicas": 4}, headers={"If-Match": '"1"'}
    )
    client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "db", "image": "postgres:16"})
    listed = client.simulate_get("/acmecorp.com/v1/fancy-workloads", params={"image": "nginx:1.27"})
    deleted = client.simulate_delete(f"/acmecorp.com/v1/fancy-workloads/{obj['id']}")

    # Then each behaves as for a core kind
    assert fetched.status_code == 200 and fetched.json["name"] == "web"
    assert patched.status_code == 200 and (patched.json["replicas"], patched.json["generation"]) == (3, 2)
    assert stale.status_code == 412
    assert [item["name"] for item in listed.json["items"]] == ["web"] and listed.json["next"] is None
    assert deleted.status_code == 202 and deleted.json["deletion_scheduled"]
    assert [row.generation for row in outbox_rows(obj["kind"]) if str(row.object_id) == obj["id"]] == [1, 2, 3]
    # And the metrics label the requests by the kind's path template, never by an object's id
    metrics = client.simulate_get("/metrics").text
    assert 'route="/acmecorp.com/v1/fancy-workloads",status="201"' in metrics
    assert 'route="/acmecorp.com/v1/fancy-workloads/{object_id}",status="412"' in metrics
    assert obj["id"] not in metrics


def test_pages_of_an_extension_kind_follow_the_cursor(client, registered):
    # Given five objects
    for n in range(5):
        client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": f"w{n}", "image": "nginx"})

    # When they are listed two at a time
    names, after = [], None
    while True:
        page = client.simulate_get(
            "/acmecorp.com/v1/fancy-workloads", params={"limit": 2, **({"after": after} if after else {})}
        )
        names += [item["name"] for item in page.json["items"]]
        after = page.json["next"]
        if not after:
            break

    # Then every object comes once, in creation order
    assert names == ["w0", "w1", "w2", "w3", "w4"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"name": "x", "image": "nginx", "replicas": 0}, "field 'replicas': 0 is less than the minimum of 1"),
        ({"name": "x", "image": "nginx", "replicas": "two"}, "field 'replicas' must be of type int"),
        ({"name": "x", "image": "nginx", "ports": [80, 70000]}, "field 'ports'[1]: 70000 is greater than the maximum"),
        ({"name": "x", "image": ""}, "field 'image': '' should be non-empty"),
        ({"name": "x"}, "missing field 'image'"),
        ({"name": "x", "image": "nginx", "colour": "red"}, "unknown field 'colour'"),
        ({"name": "x", "image": "nginx", "generation": 7}, "field 'generation' is managed by the server"),
    ],
)
def test_objects_that_break_the_schema_are_refused_with_422(client, registered, body, detail):
    # When an object breaking the kind's schema is created
    answer = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json=body)

    # Then the answer is a 422 problem naming what is wrong, and nothing is stored
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert detail in answer.json["detail"]
    assert client.simulate_get("/acmecorp.com/v1/fancy-workloads").json["items"] == []


@pytest.mark.parametrize(
    ("registration", "detail"),
    [
        (fancy_extension(domain="Acme Corp"), "must be a lower-case DNS domain"),
        (fancy_extension(version="1.0"), "field 'version' must look like 'v1'"),
        (fancy_extension(queue="workloads"), "field 'queue' must be 'ext.acmecorp.com' or under it"),
        (fancy_extension(schema={"type": "object", "properties": {"Image": {"type": "string"}}}), "lower_snake_case"),
        (fancy_extension(schema={"type": "object", "properties": {"status": {}}}), "a field every object has"),
        (
            fancy_extension(schema={"type": "object", "properties": {"a": {"type": "strong"}}}),
            "not a valid JSON Schema",
        ),
        (fancy_extension(schema={"type": "object", "required": ["b"], "properties": {}}), "are not among"),
        (
            {"domain": "acmecorp.com", "version": "v1", "kinds": [{"kind": "fancy", "schema": {"type": "object"}}]},
            "CamelCase",
        ),
        (fancy_extension(queue="ext.acmecorp.com.a b"), "is not a queue name"),
        (fancy_extension(queue="ext.acmecorp.com.>"), "is not a queue name"),
        (fancy_extension(queue="ext.acmecorp.com..x"), "is not a queue name"),
        ({"domain": [], "version": "v1", "kinds": []}, "domain"),
        (fancy_extension(schema={"type": "object", "properties": {"index": {}}}), "'index' is a name the kind's"),
        (fancy_extension(schema={"type": "object", "properties": {"plural": {}}}), "'plural' is a name the kind's"),
        (fancy_extension(schema={"type": "object", "properties": {"select": {}}}), "'select' is a name the kind's"),
        (
            fancy_extension(schema={"type": "object", "properties": {f"p{i}": {} for i in range(1001)}}),
            "at most 1000 properties",
        ),
        (fancy_extension(schema={"type": "object", "properties": {"a": {"$ref": "#/nope"}}}), "are not followed"),
        (
            fancy_extension(schema={"type": "object", "properties": {"a": {"items": {"$ref": "http://e.com/s"}}}}),
            "are not followed",
        ),
        (
            fancy_extension(schema={"type": "object", "properties": {"n": {"type": "integer", "default": [1]}}}),
            "the default of property 'n' is not valid",
        ),
        (
            fancy_extension(schema={"type": "object", "properties": {"b": {"type": "boolean", "default": "no"}}}),
            "the default of property 'b' is not valid",
        ),
        (
            fancy_extension(schema={"type": "object", "properties": {"n": {"type": "integer", "default": 2**70}}}),
            "the default of property 'n' does not fit in 64 bits",
        ),
        (
            fancy_extension(schema={"type": "object", "properties": {"a": {"type": "string", "pattern": r"(a)\1"}}}),
            r"pattern '(a)\\1' cannot run in linear time (invalid escape sequence",
        ),
        (
            fancy_extension(schema={"type": "object", "properties": {"a": {"patternProperties": {"x": {}}}}}),
            "patternProperties is not supported",
        ),
    ],
)
def test_bad_registrations_are_refused_with_422(client, registration, detail):
    # When a malformed registration is posted
    answer = client.simulate_post("/v0/extensions", json=registration)

    # Then it is refused with what is wrong, and nothing is registered
    assert answer.status_code == 422, answer.text
    assert detail in answer.json["detail"]
    assert client.simulate_get("/v0/extensions").json["items"] == []


def test_a_kind_with_a_list_of_types_and_defaults_that_fit_is_served(client):
    # Given a kind whose properties take a list of types, and fitting defaults (of a JSON column too)
    schema = {
        "type": "object",
        "properties": {
            "note": {"type": ["string", "null"]},
            "size": {"enum": ["S", "M", "L"], "default": "M"},
            "count": {"type": "integer", "default": 2},
        },
    }
    assert client.simulate_post("/v0/extensions", json=fancy_extension(schema=schema)).status_code == 201

    # Then its objects are created with the defaults, and checked against the schema
    created = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "a", "note": None})
    assert created.status_code == 201, created.text
    assert (created.json["size"], created.json["count"], created.json["note"]) == ("M", 2, None)
    refused = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "b", "size": "XL"})
    assert refused.status_code == 422 and "size" in refused.json["detail"]


def test_a_pattern_that_would_backtrack_for_ever_checks_long_values_at_once(client):
    # Given a kind whose pattern takes Python's regular expressions exponential time on a near-miss
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}}
    assert client.simulate_post("/v0/extensions", json=fancy_extension(schema=schema)).status_code == 201

    # When an object's value nearly matches, 5,000 characters long (Python's re: seconds at 25)
    refused = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "x", "a": "a" * 5000 + "!"})

    # Then it is refused at once, and a match is accepted
    assert refused.status_code == 422 and "does not match '^(a+)+$'" in refused.json["detail"]
    assert client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "y", "a": "aaa"}).status_code == 201


def test_a_version_is_registered_once(client, registered):
    # When the same domain and version are registered again
    again = client.simulate_post("/v0/extensions", json=fancy_extension())

    # Then it is a conflict naming the registration to replace
    assert again.status_code == 409
    assert registered["id"] in again.json["detail"]


def test_two_extensions_with_the_same_kind_live_side_by_side(client, registered):
    # Given a second extension with the same kind name in another domain
    other = client.simulate_post("/v0/extensions", json=fancy_extension(domain="fancy.com"))
    assert other.status_code == 201, other.text

    # When each gets an object of the same name
    acme = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "web", "image": "acme:1"})
    fancy = client.simulate_post("/fancy.com/v1/fancy-workloads", json={"name": "web", "image": "fancy:1"})

    # Then both exist, each only under its own domain, with its own kind, table and queue
    assert acme.status_code == fancy.status_code == 201
    assert [o["image"] for o in client.simulate_get("/acmecorp.com/v1/fancy-workloads").json["items"]] == ["acme:1"]
    assert [o["image"] for o in client.simulate_get("/fancy.com/v1/fancy-workloads").json["items"]] == ["fancy:1"]
    assert (acme.json["kind"], fancy.json["kind"]) == ("acmecorp.com/v1/FancyWorkload", "fancy.com/v1/FancyWorkload")
    tables = {table_name("acmecorp.com", "v1", "fancy-workloads"), table_name("fancy.com", "v1", "fancy-workloads")}
    assert len(tables) == 2 and tables <= set(db.get_tables())
    assert {row.queue for row in Outbox.select()} == {"ext.acmecorp.com", "ext.fancy.com"}
    assert client.simulate_get(f"/fancy.com/v1/fancy-workloads/{acme.json['id']}").status_code == 404


def test_another_replica_serves_a_new_registration_without_restart(make_client):
    # Given two API replicas, the second already serving (its catalog loaded)
    first, second = make_client(), make_client()
    assert second.simulate_get("/acmecorp.com/v1/fancy-workloads").status_code == 404

    # When the first registers an extension
    assert first.simulate_post("/v0/extensions", json=fancy_extension()).status_code == 201

    # Then the second serves its kind at once, and lists and documents it
    created = second.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "web", "image": "nginx"})
    assert created.status_code == 201, created.text
    kinds = {item["kind"]: item for item in second.simulate_get("/v0/kinds").json["items"]}
    assert kinds["acmecorp.com/v1/FancyWorkload"]["path"] == "/acmecorp.com/v1/fancy-workloads"
    assert kinds["acmecorp.com/v1/FancyWorkload"]["queue"] == "ext.acmecorp.com"
    document = second.simulate_get("/openapi.json").json
    validate(document)
    paths = document["paths"]
    assert set(paths["/acmecorp.com/v1/fancy-workloads"]) >= {"get", "post"}
    assert set(paths["/acmecorp.com/v1/fancy-workloads/{object_id}"]) >= {"get", "patch", "put", "delete"}
    assert set(paths["/acmecorp.com/v1/fancy-workloads/{object_id}/status"]) == {"parameters", "put"}
    schemas = document["components"]["schemas"]
    properties = schemas["AcmecorpComV1FancyWorkloadCreate"]["properties"]
    assert properties["replicas"]["anyOf"][0]["maximum"] == 10
    assert properties["image"]["description"] == "The container image."


def test_a_replica_whose_catalog_is_a_moment_behind_serves_a_kind_registered_again(make_client):
    # Given two replicas serving a kind, the second's catalog loaded
    first, second = make_client(), make_client()
    registered = first.simulate_post("/v0/extensions", json=fancy_extension()).json
    assert second.simulate_get("/acmecorp.com/v1/fancy-workloads").status_code == 200

    # When the first unregisters it and registers it again with other properties, within the second's refresh
    assert first.simulate_delete(f"/v0/extensions/{registered['id']}", params={"force": "true"}).status_code == 204
    schema = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
    assert first.simulate_post("/v0/extensions", json=fancy_extension(schema=schema)).status_code == 201

    # Then the second serves the kind as it is now, not a 500 from the table as it was
    listed = second.simulate_get("/acmecorp.com/v1/fancy-workloads")
    assert listed.status_code == 200, listed.text
    created = second.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "web", "color": "red"})
    assert created.status_code == 201, created.text


def test_compatible_changes_apply_and_incompatible_ones_need_a_new_version(client, registered):
    # Given an object of the first schema
    path = f"/v0/extensions/{registered['id']}"
    client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "web", "image": "nginx"})
    etag = client.simulate_get(path).headers["etag"]

    # When an optional property is added (and 'image' made optional)
    grown = {**FANCY_SCHEMA, "properties": {**FANCY_SCHEMA["properties"], "tier": {"type": "string"}}, "required": []}
    replaced = client.simulate_put(path, json=fancy_extension(schema=grown), headers={"If-Match": etag})

    # Then the kind takes the new property at once, and the old object is intact
    assert replaced.status_code == 200, replaced.text
    created = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "api", "tier": "gold"})
    assert created.status_code == 201 and created.json["tier"] == "gold"
    [old] = client.simulate_get("/acmecorp.com/v1/fancy-workloads", params={"name": "web"}).json["items"]
    assert (old["image"], old["tier"]) == ("nginx", None)

    # And a stale If-Match, a retyped, removed or new required property are refused
    assert client.simulate_put(path, json=fancy_extension(schema=grown), headers={"If-Match": etag}).status_code == 412
    retyped = {**grown, "properties": {**grown["properties"], "replicas": {"type": "string"}}}
    removed = {**grown, "properties": {k: v for k, v in grown["properties"].items() if k != "ports"}}
    required = {**grown, "properties": {**grown["properties"], "zone": {"type": "string"}}, "required": ["zone"]}
    for schema, detail in (
        (retyped, "cannot change its type"),
        (removed, "cannot be removed"),
        (required, "must be optional"),
    ):
        answer = client.simulate_put(path, json=fancy_extension(schema=schema))
        assert answer.status_code == 422 and detail in answer.json["detail"], answer.text
        assert "new version" in answer.json["detail"]


def test_unregistering_refuses_while_objects_exist_unless_forced(client, registered):
    # Given an object of the extension's kind
    path = f"/v0/extensions/{registered['id']}"
    client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "web", "image": "nginx"})

    # When the extension is unregistered
    refused = client.simulate_delete(path)

    # Then it is refused, naming what is left, and the kind is still served
    assert refused.status_code == 409 and "1 FancyWorkload" in refused.json["detail"]
    assert client.simulate_get("/acmecorp.com/v1/fancy-workloads").status_code == 200

    # When it is forced, then the kind, its table and its outbox rows are gone
    assert client.simulate_delete(path, params={"force": "true"}).status_code == 204
    assert client.simulate_get("/acmecorp.com/v1/fancy-workloads").status_code == 404
    assert table_name("acmecorp.com", "v1", "fancy-workloads") not in db.get_tables()
    assert outbox_rows("acmecorp.com/v1/FancyWorkload") == []


def test_a_controller_reports_status_for_the_generation_it_read_and_confirms_deletion(client, registered):
    # Given an object at generation 1
    obj = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "web", "image": "nginx"}).json
    path = f"/acmecorp.com/v1/fancy-workloads/{obj['id']}"

    # When its controller reports generation 1 reconciled, with an event
    report = {"generation": 1, "status": {"phase": "Reconciled"}, "reconciled": True, "event": {"reason": "Reconciled"}}
    written = client.simulate_put(f"{path}/status", json=report)

    # Then the object shows it, and the event is listed
    assert written.status_code == 200, written.text
    assert (written.json["observed_generation"], written.json["reconciled"]) == (1, True)
    events = client.simulate_get("/v0/events", params={"object_id": obj["id"]}).json["items"]
    assert [event["reason"] for event in events] == ["Reconciled"]

    # When the spec moves on and a late report of generation 1 comes, then it is refused
    client.simulate_patch(path, json={"replicas": 2})
    assert client.simulate_put(f"{path}/status", json=report).status_code == 409
    assert client.simulate_put(f"{path}/status", json={"generation": 2, "colour": 1}).status_code == 422
    too_large = client.simulate_put(f"{path}/status", json={"generation": 2**63})
    assert too_large.status_code == 422 and "field 'generation'" in too_large.json["detail"]

    # When deletion is confirmed before it is asked for, then it is refused; after, the row goes
    assert client.simulate_post(f"{path}/confirm-deletion").status_code == 409
    client.simulate_delete(path)
    assert client.simulate_post(f"{path}/confirm-deletion").status_code == 204
    assert client.simulate_get(path).status_code == 404


def test_a_kind_nobody_reconciles_writes_no_outbox_and_deletes_at_once(client):
    # Given an extension whose kind is a plain record
    kind = {
        "kind": "Note",
        "reconciled": False,
        "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
    }
    assert (
        client.simulate_post(
            "/v0/extensions", json={"domain": "notes.io", "version": "v1", "kinds": [kind]}
        ).status_code
        == 201
    )

    # When a note is created and deleted
    note = client.simulate_post("/notes.io/v1/notes", json={"name": "n1", "text": "hello"}).json
    deleted = client.simulate_delete(f"/notes.io/v1/notes/{note['id']}")

    # Then nothing was queued, and it is gone at once
    assert deleted.status_code == 202
    assert client.simulate_get(f"/notes.io/v1/notes/{note['id']}").status_code == 404
    assert outbox_rows("notes.io/v1/Note") == []
    assert client.simulate_put(f"/notes.io/v1/notes/{note['id']}/status", json={"generation": 1}).status_code == 405


def test_an_extension_is_served_by_one_option_only(client, registered):
    # When an API server route is registered under a version whose kinds the core serves
    clash = client.simulate_post(
        "/v0/extension-api-routes",
        json={"extension": "acmecorp.com", "prefix": "/acmecorp.com/v1/", "upstream": "http://127.0.0.1:9"},
    )
    # Then it is a conflict; another version may be proxied, and then cannot be registered as kinds
    assert clash.status_code == 409, clash.text
    proxied = client.simulate_post(
        "/v0/extension-api-routes",
        json={"extension": "acmecorp.com", "prefix": "/acmecorp.com/v2/", "upstream": "http://127.0.0.1:9"},
    )
    assert proxied.status_code == 201, proxied.text
    assert client.simulate_post("/v0/extensions", json=fancy_extension(version="v2")).status_code == 409
