"""Every kind of the object model over the API: CRUD, validation, references, deletion protection, secrets.

One valid object of every reconciled kind is built through the API (the
"world"), each referencing the ones it needs; the tests then go through the
kinds one by one, on a real PostgreSQL.
"""

from __future__ import annotations

import uuid

import pytest
from falcon import testing

from api.app import create_app
from api.settings import Settings, hash_token
from models import (
    AttachedObjectReference,
    AwsAccount,
    Event,
    KubernetesRuntimeInstance,
    db,
    record_event,
    registry,
    secrets,
    store,
)
from models.base import ReconciledModel
from models.schema import fields_of

TOKEN = "object-model-test-token"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

#: A valid body for each reconciled kind, in an order where references come first.
#: ``"@Kind"`` stands for the id of the world's object of that kind.
BODIES: dict[str, dict] = {
    "KubernetesRuntimeDefinition": {"infra_provider": "kubernetes"},
    "KubernetesRuntimeInstance": {
        "kubernetes_runtime_definition_id": "@KubernetesRuntimeDefinition",
        "api_endpoint": "https://10.0.0.1:6443",
        "connection_token": "kube-token-123",
        "default_runtime": True,
    },
    "WorkloadDefinition": {"yaml_document": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"},
    "WorkloadInstance": {
        "workload_definition_id": "@WorkloadDefinition",
        "kubernetes_runtime_instance_id": "@KubernetesRuntimeInstance",
    },
    "AwsAccount": {
        "account_id": "123456789012",
        "default_region": "us-east-1",
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": SECRET_KEY,
    },
    "AwsEksKubernetesRuntimeDefinition": {
        "aws_account_id": "@AwsAccount",
        "kubernetes_runtime_definition_id": "@KubernetesRuntimeDefinition",
    },
    "AwsEksKubernetesRuntimeInstance": {
        "aws_eks_kubernetes_runtime_definition_id": "@AwsEksKubernetesRuntimeDefinition",
        "region": "us-east-1",
    },
    "AwsRelationalDatabaseDefinition": {
        "aws_account_id": "@AwsAccount",
        "engine": "postgres",
        "engine_version": "16.4",
        "database_name": "app",
        "database_port": 5432,
        "workload_secret_name": "app-db",
    },
    "AwsRelationalDatabaseInstance": {
        "aws_relational_database_definition_id": "@AwsRelationalDatabaseDefinition",
        "workload_instance_id": "@WorkloadInstance",
    },
    "AwsObjectStorageBucketDefinition": {"aws_account_id": "@AwsAccount", "workload_service_account_name": "app"},
    "AwsObjectStorageBucketInstance": {
        "aws_object_storage_bucket_definition_id": "@AwsObjectStorageBucketDefinition",
        "workload_instance_id": "@WorkloadInstance",
    },
    "DomainNameDefinition": {"domain": "example.com", "admin_email": "admin@example.com"},
    "DomainNameInstance": {
        "domain_name_definition_id": "@DomainNameDefinition",
        "workload_instance_id": "@WorkloadInstance",
    },
    "GatewayDefinition": {
        "http_ports": [{"port": 443, "tls_enabled": True, "path": "/"}],
        "domain_name_definition_id": "@DomainNameDefinition",
        "sub_domain": "www",
    },
    "GatewayInstance": {"gateway_definition_id": "@GatewayDefinition", "workload_instance_id": "@WorkloadInstance"},
    "SecretDefinition": {"aws_account_id": "@AwsAccount", "data": {"password": "hunter2"}},
    "SecretInstance": {"secret_definition_id": "@SecretDefinition", "workload_instance_id": "@WorkloadInstance"},
}
KINDS = list(BODIES)
#: (field, bad value, what the 422 says) per kind: a rule beyond the field's type.
BAD_VALUES = {
    "KubernetesRuntimeDefinition": ("infra_provider", "gke", "must be one of 'eks', 'kubernetes'"),
    "KubernetesRuntimeInstance": ("certificate", "PEM", "'certificate_key' must be given"),
    "AwsAccount": ("account_id", "12345", "must be 12 digits"),
    "AwsEksKubernetesRuntimeDefinition": ("zone_count", 9, "between 2 and 6"),
    "AwsRelationalDatabaseDefinition": ("engine", "oracle", "must be one of"),
    "DomainNameDefinition": ("domain", "localhost", "must be a DNS domain"),
    "GatewayDefinition": ("http_ports", [{"port": 70000}], "70000 is greater than the maximum of 65535"),
    "SecretDefinition": ("data", {"password": 1234}, "the values of ['password'] must be strings"),
}


def path(kind: str) -> str:
    return f"/v0/{registry.by_kind(kind).plural}"


def body_for(kind: str, world: dict[str, dict], name: str) -> dict:
    body = {
        key: (world[value[1:]]["id"] if str(value).startswith("@") else value) for key, value in BODIES[kind].items()
    }
    return {"name": name, **body}


@pytest.fixture
def client(database):
    app = create_app(Settings(token_hashes=frozenset({hash_token(TOKEN)})))
    return testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def world(client) -> dict[str, dict]:
    """One object of every reconciled kind, created through the API."""
    made: dict[str, dict] = {}
    for kind in KINDS:
        result = client.simulate_post(path(kind), json=body_for(kind, made, f"the-{kind.lower()}"))
        assert result.status_code == 201, (kind, result.json)
        made[kind] = result.json
    return made


def referrers(kind: str) -> list[str]:
    """Kinds of the world that reference ``kind``."""
    return [other for other in KINDS if any(v == f"@{kind}" for v in BODIES[other].values())]


def test_the_world_covers_every_reconciled_kind():
    assert set(KINDS) == {model.kind for model in registry.reconciled_kinds()}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_created_read_listed_and_renamed(client, world, kind):
    # Given the world's object of this kind
    created = world[kind]
    url = f"{path(kind)}/{created['id']}"

    # Then it reads back as created, with its references by id and at generation 1
    got = client.simulate_get(url)
    assert got.status_code == 200 and got.json == created
    assert (created["kind"], created["generation"], created["observed_generation"]) == (kind, 1, 0)
    for field, value in BODIES[kind].items():
        if not fields_of(registry.by_kind(kind))[field].secret:
            expected = world[value[1:]]["id"] if str(value).startswith("@") else value
            assert created[field] == expected, field
    # And it is listed, filtered by name and by each reference
    listed = client.simulate_get(path(kind), params={"name": created["name"]}).json["items"]
    assert [o["id"] for o in listed] == [created["id"]]
    for field, value in BODIES[kind].items():
        if str(value).startswith("@"):
            by_ref = client.simulate_get(path(kind), params={field: world[value[1:]]["id"]}).json["items"]
            assert [o["id"] for o in by_ref] == [created["id"]]

    # When it is renamed
    renamed = client.simulate_patch(url, json={"name": "renamed"}, headers={"If-Match": '"1"'})

    # Then the name changes, the spec's generation does not
    assert renamed.status_code == 200
    assert (renamed.json["name"], renamed.json["generation"], renamed.json["resource_version"]) == ("renamed", 1, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_names_are_unique_per_kind(client, world, kind):
    again = client.simulate_post(path(kind), json=body_for(kind, world, world[kind]["name"]))
    assert again.status_code == 409 and world[kind]["name"] in again.json["detail"]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_and_server_managed_fields_are_refused(client, world, kind):
    body = body_for(kind, world, "new-one")
    for extra, message in (({"colour": "blue"}, "unknown field 'colour'"), ({"reconciled": True}, "managed by")):
        result = client.simulate_post(path(kind), json={**body, **extra})
        assert result.status_code == 422 and message in result.json["detail"]


@pytest.mark.parametrize("kind", KINDS)
def test_required_fields_are_required(client, world, kind):
    model = registry.by_kind(kind)
    required = [info.name for info in fields_of(model).values() if info.required and info.name != "name"]
    body = body_for(kind, world, "new-one")
    for name in required:
        result = client.simulate_post(path(kind), json={k: v for k, v in body.items() if k != name})
        assert result.status_code == 422 and f"missing field {name!r}" in result.json["detail"]


@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_kind_rules_are_enforced_on_create_and_update(client, world, kind):
    field, value, message = BAD_VALUES[kind]
    created = client.simulate_post(path(kind), json={**body_for(kind, world, "new-one"), field: value})
    assert created.status_code == 422 and message in created.json["detail"], created.json
    patched = client.simulate_patch(f"{path(kind)}/{world[kind]['id']}", json={field: value})
    assert patched.status_code == 422 and message in patched.json["detail"]


@pytest.mark.parametrize("kind", [k for k in KINDS if any(str(v).startswith("@") for v in BODIES[k].values())])
def test_references_must_point_at_existing_objects(client, world, kind):
    body = body_for(kind, world, "new-one")
    for field, value in BODIES[kind].items():
        if not str(value).startswith("@"):
            continue
        missing = str(uuid.uuid4())
        result = client.simulate_post(path(kind), json={**body, field: missing})
        assert result.status_code == 422
        assert field in result.json["detail"] and missing in result.json["detail"]
        garbage = client.simulate_post(path(kind), json={**body, field: "not-a-uuid"})
        assert garbage.status_code == 422 and "must be a UUID" in garbage.json["detail"]


@pytest.mark.parametrize("kind", [k for k in KINDS if referrers(k)])
def test_an_object_others_reference_cannot_be_deleted(client, world, kind):
    # When an object others reference is deleted
    result = client.simulate_delete(f"{path(kind)}/{world[kind]['id']}")

    # Then the API refuses with a 409 naming a referrer, and nothing changes
    assert result.status_code == 409
    assert any(world[other]["name"] in result.json["detail"] for other in referrers(kind)), result.json
    assert client.simulate_get(f"{path(kind)}/{world[kind]['id']}").json["deletion_scheduled"] is None


def test_deletion_proceeds_once_referrers_are_gone(client, world):
    # Given a definition with an instance: its deletion is refused
    definition, instance = world["AwsRelationalDatabaseDefinition"], world["AwsRelationalDatabaseInstance"]
    assert client.simulate_delete(f"{path('AwsRelationalDatabaseDefinition')}/{definition['id']}").status_code == 409

    # When the instance is deleted and its deletion confirmed (as its reconciler does)
    assert client.simulate_delete(f"{path('AwsRelationalDatabaseInstance')}/{instance['id']}").status_code == 202
    model = registry.by_kind("AwsRelationalDatabaseInstance")
    assert store.confirm_deletion(model, instance["id"])

    # Then the definition may go
    assert client.simulate_delete(f"{path('AwsRelationalDatabaseDefinition')}/{definition['id']}").status_code == 202


def test_an_object_being_deleted_cannot_be_referenced(client, world):
    # Given a workload definition scheduled for deletion (nothing references it yet)
    fresh = client.simulate_post(path("WorkloadDefinition"), json=body_for("WorkloadDefinition", world, "going")).json
    assert client.simulate_delete(f"{path('WorkloadDefinition')}/{fresh['id']}").status_code == 202

    # When an instance references it, then that is refused
    body = {**body_for("WorkloadInstance", world, "late"), "workload_definition_id": fresh["id"]}
    result = client.simulate_post(path("WorkloadInstance"), json=body)
    assert result.status_code == 422 and "being deleted" in result.json["detail"]


# Secrets ---------------------------------------------------------------------------


def test_secret_fields_are_encrypted_at_rest_and_never_returned(client, world):
    account = world["AwsAccount"]

    # Then the API shows no secret field, in the create answer, a get or a list
    for shown in (
        account,
        client.simulate_get(f"{path('AwsAccount')}/{account['id']}").json,
        client.simulate_get(path("AwsAccount")).json["items"][0],
    ):
        assert "secret_access_key" not in shown and "access_key_id" not in shown
    runtime = client.simulate_get(f"{path('KubernetesRuntimeInstance')}/{world['KubernetesRuntimeInstance']['id']}")
    assert "connection_token" not in runtime.json

    # And the stored column is not the plaintext, while the model reads the plaintext back
    stored = db.execute_sql("SELECT secret_access_key FROM aws_accounts WHERE id = %s", (account["id"],)).fetchone()[0]
    assert stored and SECRET_KEY not in stored
    assert store.get(AwsAccount, account["id"]).secret_access_key == SECRET_KEY
    assert store.get(KubernetesRuntimeInstance, world["KubernetesRuntimeInstance"]["id"]).connection_token == (
        "kube-token-123"
    )

    # And secrets cannot be filtered on (that would leak them)
    assert client.simulate_get(path("AwsAccount"), params={"secret_access_key": SECRET_KEY}).status_code == 422


def test_secrets_need_the_key_and_a_rotated_key_still_reads_old_rows(client, world):
    account_id = world["AwsAccount"]["id"]
    old_key = secrets.generate_key()
    try:
        # Given rows written with another key: without it they cannot be read, and the error says why
        secrets.configure(old_key)
        written = store.create(AwsAccount, {**body_for("AwsAccount", world, "old"), "secret_access_key": "old-secret"})
        secrets.configure(secrets.generate_key())
        with pytest.raises(secrets.ConfigurationError, match="encrypted with a key"):
            store.get(AwsAccount, written.obj.id)

        # When a new key is put first with the old one kept, then both rows read back
        from tests.postgres import ENCRYPTION_KEY

        secrets.configure(f"{secrets.generate_key()},{old_key},{ENCRYPTION_KEY}")
        assert store.get(AwsAccount, written.obj.id).secret_access_key == "old-secret"
        assert store.get(AwsAccount, account_id).secret_access_key == SECRET_KEY

        # And with no key at all, writing a secret is a clear 503, not a plaintext row
        secrets.configure(None)
        result = client.simulate_post(path("AwsAccount"), json=body_for("AwsAccount", world, "no-key"))
        assert result.status_code == 503 and "THREEPORT_ENCRYPTION_KEY" in result.json["detail"]
        assert AwsAccount.select().where(AwsAccount.name == "no-key").count() == 0
    finally:
        from tests.postgres import ENCRYPTION_KEY

        secrets.configure(ENCRYPTION_KEY)


def test_a_bad_encryption_key_is_refused_with_a_clear_error():
    with pytest.raises(secrets.ConfigurationError, match="Fernet keys"):
        secrets.configure("not-a-key")


# Records ---------------------------------------------------------------------------


def test_events_are_listed_per_object_and_repeats_count_up(client, world):
    # Given events about an object: two alike in a row, then another
    obj_id = world["WorkloadInstance"]["id"]
    for reason, message in (("Waiting", "runtime not ready"), ("Waiting", "runtime not ready"), ("Reconciled", "ok")):
        record_event("WorkloadInstance", obj_id, reason, message)
    record_event("WorkloadDefinition", world["WorkloadDefinition"]["id"], "Reconciled", "ok")

    # When the object's events are listed
    events = client.simulate_get("/v0/events", params={"object_id": obj_id}).json["items"]

    # Then the repeat counted up rather than adding a row, in order
    assert [(e["reason"], e["count"]) for e in events] == [("Waiting", 2), ("Reconciled", 1)]
    assert all(e["object_kind"] == "WorkloadInstance" for e in events)
    # And clients cannot write events
    assert client.simulate_post("/v0/events", json={"reason": "x"}).status_code == 405
    assert client.simulate_delete(f"/v0/events/{events[0]['id']}").status_code == 405


def test_attached_object_references_are_checked_unique_and_go_with_their_objects(client, world):
    reference = {
        "object_type": "WorkloadInstance",
        "object_id": world["WorkloadInstance"]["id"],
        "attached_object_type": "AwsRelationalDatabaseInstance",
        "attached_object_id": world["AwsRelationalDatabaseInstance"]["id"],
    }
    created = client.simulate_post("/v0/attached-object-references", json=reference)
    assert created.status_code == 201
    assert client.simulate_post("/v0/attached-object-references", json=reference).status_code == 409
    for bad, message in (
        ({"object_type": "Nope"}, "no kind named 'Nope'"),
        ({"attached_object_id": str(uuid.uuid4())}, "no AwsRelationalDatabaseInstance with id"),
        ({"object_type": "Event"}, "cannot be attached"),
    ):
        result = client.simulate_post("/v0/attached-object-references", json={**reference, **bad})
        assert result.status_code == 422 and message in result.json["detail"]
    listed = client.simulate_get("/v0/attached-object-references", params={"object_id": reference["object_id"]})
    assert [r["id"] for r in listed.json["items"]] == [created.json["id"]]

    # When the attached object is deleted and confirmed, then its references and events go with it
    record_event("AwsRelationalDatabaseInstance", reference["attached_object_id"], "Reconciled", "ok")
    model = registry.by_kind("AwsRelationalDatabaseInstance")
    store.schedule_deletion(model, reference["attached_object_id"])
    store.confirm_deletion(model, reference["attached_object_id"])
    assert AttachedObjectReference.select().count() == 0
    assert Event.select().where(Event.object_id == reference["attached_object_id"]).count() == 0

    # And a reference can be deleted by a client
    again = client.simulate_post(
        "/v0/attached-object-references",
        json={
            **reference,
            "attached_object_type": "GatewayInstance",
            "attached_object_id": world["GatewayInstance"]["id"],
        },
    )
    assert client.simulate_delete(f"/v0/attached-object-references/{again.json['id']}").status_code == 204
    assert client.simulate_get(f"/v0/attached-object-references/{again.json['id']}").status_code == 404


def test_child_records_are_read_only_and_go_with_their_parent(client, world):
    # Given a definition's parsed documents (as its reconciler records them)
    from models.workloads import WorkloadResourceDefinition, record_resources

    definition_id = world["WorkloadDefinition"]["id"]
    record_resources(definition_id, [("ConfigMap/web", {"kind": "ConfigMap"})])
    listed = client.simulate_get("/v0/workload-resource-definitions", params={"workload_definition_id": definition_id})
    assert [(r["name"], r["json_definition"]) for r in listed.json["items"]] == [
        ("ConfigMap/web", {"kind": "ConfigMap"})
    ]
    assert client.simulate_post("/v0/workload-resource-definitions", json={}).status_code == 405
    assert issubclass(registry.by_kind("WorkloadInstance"), ReconciledModel)
    assert WorkloadResourceDefinition.select().count() == 1


@pytest.mark.parametrize(
    ("kind", "flag", "message"),
    [
        ("KubernetesRuntimeInstance", "default_runtime", "is the default runtime already"),
        ("AwsAccount", "default_account", "is the default account already"),
    ],
)
def test_there_is_at_most_one_default(client, world, kind, flag, message):
    # Given one object of the kind marked default
    first = world[kind]
    assert client.simulate_patch(f"{path(kind)}/{first['id']}", json={flag: True}).json[flag] is True

    # When a second one is made default, on create or update, then that is a 409 saying why
    second = client.simulate_post(path(kind), json={**body_for(kind, world, "second"), flag: True})
    assert second.status_code == 409 and message in second.json["detail"]
    other = client.simulate_post(path(kind), json={**body_for(kind, world, "second"), flag: False}).json
    patched = client.simulate_patch(f"{path(kind)}/{other['id']}", json={flag: True})
    assert patched.status_code == 409 and message in patched.json["detail"]

    # And once the first lets go, the second may take over
    client.simulate_patch(f"{path(kind)}/{first['id']}", json={flag: False})
    assert client.simulate_patch(f"{path(kind)}/{other['id']}", json={flag: True}).json[flag] is True


def test_put_replaces_an_object_with_references_by_their_api_names(client, world):
    # Given a workload instance, when it is replaced with every writable field by API name
    instance = world["WorkloadInstance"]
    body = {**body_for("WorkloadInstance", world, "replaced"), "kubernetes_runtime_instance_id": None}
    replaced = client.simulate_put(f"{path('WorkloadInstance')}/{instance['id']}", json=body)

    # Then it takes the new values; a PUT missing a reference is refused naming it
    assert replaced.status_code == 200, replaced.json
    assert (replaced.json["name"], replaced.json["kubernetes_runtime_instance_id"]) == ("replaced", None)
    partial = client.simulate_put(f"{path('WorkloadInstance')}/{instance['id']}", json={"name": "x"})
    assert partial.status_code == 422 and "workload_definition_id" in partial.json["detail"]


def test_a_bounded_integer_says_its_own_range_whatever_the_value(client, world):
    # Given a database definition (its port 1-65535, its storage 20-65536 GiB)
    rds = world["AwsRelationalDatabaseDefinition"]
    url = f"{path('AwsRelationalDatabaseDefinition')}/{rds['id']}"

    # When a port beyond even the column's 32 bits is given, or storage under the floor
    for field, value in (("database_port", 2**40), ("database_port", 0), ("storage_gib", 19)):
        result = client.simulate_patch(url, json={field: value})

        # Then the 422 names the field's own range, not the column's
        low, high = {"database_port": (1, 65535), "storage_gib": (20, 65536)}[field]
        assert result.status_code == 422, result.json
        assert result.json["detail"] == f"field '{field}' must be between {low} and {high}, not {value}"

    # And the bounds themselves are accepted
    result = client.simulate_patch(url, json={"database_port": 65535, "storage_gib": 20})
    assert result.status_code == 200, result.json
