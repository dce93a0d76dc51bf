"""The client verbs (apply, get, describe, delete, wait, events, version) against a live API over real HTTP.

The API is the real app on a loopback port, on this test's PostgreSQL
database and publishing to the session's NATS; the CLI runs in-process with
its own client config pointing at it. Tests that need objects reconciled run
the real reconcile actor in a Dramatiq worker.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import Optional

import httpx
import pytest
from dramatiq import Worker
from typer.testing import CliRunner, Result

from api.app import create_app
from api.settings import Settings, hash_token
from cli.client import Catalog, Field, Kind
from cli.config import ClientConfig, ControlPlane, save
from cli.main import app
from cli.manifests import Document, ManifestError, plan
from models import record_event
from tasks import api_client
from tasks.actor import declare_actors
from tasks.api_client import ApiClient, ApiError, UnknownKind
from workers.locks import LockManager
from workers.outbox_relay import publish_rows

from .live_api import served

TOKEN = "cli-objects-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"

STACK = """\
kind: WorkloadInstance
name: web
workload_definition: web
kubernetes_runtime_instance: prod
---
kind: KubernetesRuntimeInstance
name: prod
kubernetes_runtime_definition: prod
api_endpoint: https://k8s.example.com
---
kind: WorkloadDefinition
name: web
yaml_document: |
  apiVersion: v1
  kind: ConfigMap
  metadata:
    name: web
---
kind: KubernetesRuntimeDefinition
name: prod
infra_provider: kubernetes
"""

INFRA = """\
kind: AwsAccount
name: main
account_id: "123456789012"
default_region: us-east-1
access_key_id: AKIAEXAMPLE
secret_access_key: not-so-secret
---
kind: KubernetesRuntimeDefinition
name: prod
infra_provider: kubernetes
---
kind: KubernetesRuntimeInstance
name: prod
kubernetes_runtime_definition: prod
"""

WORKLOAD = """\
kind: Workload
name: wordpress
yaml_document_path: wordpress.yaml
kubernetes_runtime_instance: prod
aws_relational_database:
  name: wordpress-db
  aws_account: main
  engine: mysql
  engine_version: "8.0"
  database_name: wordpress
  database_port: 3306
  workload_secret_name: wordpress-db-conn
aws_object_storage_bucket:
  name: wordpress-media
  aws_account: main
  workload_service_account_name: wordpress
domain_name: {name: example, domain: example.com, admin_email: admin@example.com}
gateway: {name: wordpress-gw, http_ports: [{port: 443, tls_enabled: true}], sub_domain: www}
"""


@pytest.fixture
def api_url(database, broker):
    """The API served over HTTP on a free loopback port, on this test's database and broker."""
    settings = Settings(token_hashes=frozenset({hash_token(TOKEN)}))
    wsgi = create_app(settings, publish=functools.partial(publish_rows, broker))
    with served(wsgi) as url:
        yield url


@pytest.fixture
def cli(api_url, tmp_path, monkeypatch):
    """Run ``threeport ...`` in-process, its client config naming the live API as current."""
    config = ClientConfig()
    config.add(ControlPlane(name="test", api_url=api_url, token=TOKEN))
    save(config, tmp_path / "client.yaml")
    monkeypatch.setenv("THREEPORT_CONFIG", str(tmp_path / "client.yaml"))
    monkeypatch.delenv("THREEPORT_API_URL", raising=False)
    monkeypatch.delenv("THREEPORT_API_TOKEN", raising=False)
    runner = CliRunner()

    def invoke(*args: str, input: Optional[str] = None) -> Result:
        return runner.invoke(app, list(args), input=input, env={"COLUMNS": "200"})

    return invoke


@pytest.fixture
def http(api_url):
    """A plain HTTP client of the API, to check what the CLI did."""
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture
def reconciling(database, broker, prefix):
    """The reconcile actor declared on the test's broker, and a worker running it."""
    locks = LockManager(connection=broker.connection, bucket=f"locks_{prefix}")
    declare_actors(broker, locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()
    locks.delete_bucket()


def manifest(directory: Path, text: str, name: str = "manifest.yaml") -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def definition_manifest(name: str) -> str:
    """A manifest of one WorkloadDefinition with valid Kubernetes YAML."""
    return f"kind: WorkloadDefinition\nname: {name}\nyaml_document: {json.dumps(YAML)}\n"


def ok(result: Result) -> list[str]:
    """The lines a successful command printed."""
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def objects(cli, kind: str) -> dict[str, dict]:
    """The objects of ``kind`` by name, as ``get -o json`` prints them."""
    return {obj["name"]: obj for obj in json.loads(cli("get", kind, "-o", "json").stdout)}


def test_apply_get_describe_delete_round_trip(cli, http, tmp_path, reconciling):
    # Given a file whose objects reference each other by name, referrers written first
    path = manifest(tmp_path, STACK)

    # When I apply it
    applied = ok(cli("apply", "-f", path))

    # Then every object is created, referenced ones first
    assert applied == [
        "WorkloadDefinition/web created",
        "KubernetesRuntimeDefinition/prod created",
        "KubernetesRuntimeInstance/prod created",
        "WorkloadInstance/web created",
    ]
    # And the references by name became the right ids
    definition, runtime = objects(cli, "WorkloadDefinition")["web"], objects(cli, "KubernetesRuntimeInstance")["prod"]
    instance = objects(cli, "workload-instances")["web"]
    assert instance["workload_definition_id"] == definition["id"]
    assert instance["kubernetes_runtime_instance_id"] == runtime["id"]
    assert runtime["kubernetes_runtime_definition_id"] == objects(cli, "KubernetesRuntimeDefinition")["prod"]["id"]

    # When I list workload instances as a table, then I see the object and its generation
    table = ok(cli("get", "workload-instance"))
    assert table[0].split() == ["NAME", "GENERATION", "RECONCILED", "PHASE", "MESSAGE", "AGE"]
    assert table[1].split()[:2] == ["web", f"{instance['observed_generation']}/1"]

    # When something happened to the instance and an object is attached to it
    record_event("WorkloadInstance", instance["id"], "Probing", "looked at the cluster")
    attached = {
        "object_type": "WorkloadInstance",
        "object_id": instance["id"],
        "attached_object_type": "KubernetesRuntimeInstance",
        "attached_object_id": runtime["id"],
    }
    assert http.post("/v0/attached-object-references", json=attached).status_code == 201

    # Then describe shows its spec with references by name, status, lifecycle, events and attached objects
    described = ok(cli("describe", "WorkloadInstance", "web"))
    assert "  workload_definition: web" in described
    assert "  kubernetes_runtime_instance: prod" in described
    assert any(line.startswith("  generation: 1 (observed ") for line in described)
    assert "  creation_failed: false" in described
    assert any("Probing" in line and "looked at the cluster" in line for line in described)
    attached_line = next(line for line in described if "KubernetesRuntimeInstance" in line and runtime["id"] in line)
    assert attached_line.split()[:3] == ["attached", "KubernetesRuntimeInstance", "prod"]

    # When I delete the file's objects, waiting for each
    deleted = ok(cli("delete", "-f", path, "--wait", "--timeout", "60"))

    # Then they went referrers first, each once those referencing it were gone
    assert deleted == [
        "WorkloadInstance/web deleted",
        "KubernetesRuntimeInstance/prod deleted",
        "KubernetesRuntimeDefinition/prod deleted",
        "WorkloadDefinition/web deleted",
    ]
    assert http.get(f"/v0/workload-instances/{instance['id']}").status_code == 404
    assert ok(cli("get", "WorkloadInstance")) == ["No WorkloadInstance objects."]


def test_apply_twice_writes_nothing_the_second_time(cli, tmp_path):
    # Given a file applied once
    path = manifest(tmp_path, STACK)
    ok(cli("apply", "-f", path))
    before = {kind: objects(cli, kind) for kind in ("WorkloadDefinition", "WorkloadInstance")}

    # When I apply it again
    again = ok(cli("apply", "-f", path))

    # Then every object is unchanged, and nothing was written
    assert again == [line.replace("created", "unchanged") for line in again]
    assert all(line.endswith(" unchanged") for line in again) and len(again) == 4
    after = {kind: objects(cli, kind) for kind in before}
    for kind, named in before.items():
        for name, obj in named.items():
            assert after[kind][name]["resource_version"] == obj["resource_version"]


def test_apply_reads_json_from_stdin(cli):
    # Given a JSON array of two objects, the second referencing the first by name
    documents = [
        {"kind": "WorkloadDefinition", "name": "web", "yaml_document": YAML},
        {"kind": "workload-instances", "name": "web", "workload_definition": "web"},
    ]

    # When I pipe it to apply -f -
    result = cli("apply", "-f", "-", input=json.dumps(documents))

    # Then both are created
    assert ok(result) == ["WorkloadDefinition/web created", "WorkloadInstance/web created"]


def test_a_changed_field_is_configured_and_bumps_the_generation(cli, tmp_path):
    # Given a file applied once
    ok(cli("apply", "-f", manifest(tmp_path, STACK)))

    # When the workload's YAML changes in the file and I apply it
    changed = STACK.replace("    name: web\n", "    name: web-v2\n")
    result = ok(cli("apply", "-f", manifest(tmp_path, changed)))

    # Then only that object is configured, at a new generation
    assert "WorkloadDefinition/web configured" in result
    assert sorted(line.split()[-1] for line in result) == ["configured", "unchanged", "unchanged", "unchanged"]
    definition = objects(cli, "WorkloadDefinition")["web"]
    assert definition["generation"] == 2 and "web-v2" in definition["yaml_document"]


def test_a_workload_manifest_expands_into_its_definitions_and_instances(cli, tmp_path):
    # Given an AWS account and a runtime, applied first
    ok(cli("apply", "-f", manifest(tmp_path, INFRA, "infra.yaml")))
    # And a Workload manifest whose Kubernetes YAML sits next to it
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "wordpress.yaml").write_text(YAML)
    path = manifest(tmp_path / "apps", WORKLOAD, "workload.yaml")

    # When I apply it
    result = ok(cli("apply", "-f", path))

    # Then it becomes a definition and an instance of the workload and of each of its parts
    assert result == [
        "WorkloadDefinition/wordpress created",
        "WorkloadInstance/wordpress created",
        "AwsRelationalDatabaseDefinition/wordpress-db created",
        "AwsRelationalDatabaseInstance/wordpress-db created",
        "AwsObjectStorageBucketDefinition/wordpress-media created",
        "AwsObjectStorageBucketInstance/wordpress-media created",
        "DomainNameDefinition/example created",
        "DomainNameInstance/example created",
        "GatewayDefinition/wordpress-gw created",
        "GatewayInstance/wordpress-gw created",
    ]
    # And each references the right objects
    account = objects(cli, "AwsAccount")["main"]
    definition = objects(cli, "WorkloadDefinition")["wordpress"]
    instance = objects(cli, "WorkloadInstance")["wordpress"]
    assert definition["yaml_document"] == YAML
    assert instance["workload_definition_id"] == definition["id"]
    assert instance["kubernetes_runtime_instance_id"] == objects(cli, "KubernetesRuntimeInstance")["prod"]["id"]
    database = objects(cli, "AwsRelationalDatabaseDefinition")["wordpress-db"]
    assert (database["aws_account_id"], database["engine"], database["database_port"]) == (account["id"], "mysql", 3306)
    bucket = objects(cli, "AwsObjectStorageBucketDefinition")["wordpress-media"]
    assert bucket["aws_account_id"] == account["id"]
    domain = objects(cli, "DomainNameDefinition")["example"]
    gateway = objects(cli, "GatewayDefinition")["wordpress-gw"]
    assert gateway["domain_name_definition_id"] == domain["id"]
    assert gateway["http_ports"] == [{"port": 443, "tls_enabled": True}] and gateway["sub_domain"] == "www"
    for kind, name, reference in [
        ("AwsRelationalDatabaseInstance", "wordpress-db", ("aws_relational_database_definition_id", database)),
        ("AwsObjectStorageBucketInstance", "wordpress-media", ("aws_object_storage_bucket_definition_id", bucket)),
        ("DomainNameInstance", "example", ("domain_name_definition_id", domain)),
        ("GatewayInstance", "wordpress-gw", ("gateway_definition_id", gateway)),
    ]:
        part = objects(cli, kind)[name]
        assert part[reference[0]] == reference[1]["id"], kind
        assert part["workload_instance_id"] == instance["id"], kind

    # When both files are applied again, then nothing changes, the account's secrets included
    again = ok(cli("apply", "-f", str(tmp_path / "infra.yaml"), "-f", path))
    assert len(again) == 13 and all(line.endswith(" unchanged") for line in again)
    assert objects(cli, "AwsAccount")["main"]["resource_version"] == account["resource_version"]
    assert "secret_access_key" not in account


def test_an_unknown_key_in_a_workload_is_an_error_naming_it(cli, tmp_path):
    # Given a Workload manifest with a key a Workload does not have
    path = manifest(tmp_path, "kind: Workload\nname: web\nyaml_document: 'a: b'\nreplicas: 3\n")

    # When I apply it, then one line names the key and nothing is created
    result = cli("apply", "-f", path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {path}, document 1 (Workload/web): unknown key 'replicas' in a Workload")
    assert ok(cli("get", "WorkloadDefinition")) == ["No WorkloadDefinition objects."]


@pytest.mark.parametrize("path", ["/etc/hostname", "../secret.yaml", "apps/../../secret.yaml", "link.yaml"])
def test_a_workload_reads_its_kubernetes_yaml_only_from_beside_its_manifest(cli, tmp_path, path):
    # Given a file outside the manifest's directory, and a link beside the manifest pointing at it
    (tmp_path / "secret.yaml").write_text("password: hunter2\n")
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "link.yaml").symlink_to(tmp_path / "secret.yaml")
    # And a Workload manifest whose yaml_document_path leads out of its directory
    text = f"kind: Workload\nname: web\nyaml_document_path: {path}\n"

    # When I apply it, then one line says the path is outside the manifest's directory and nothing is written
    result = cli("apply", "-f", manifest(directory, text))
    assert result.exit_code == 1
    assert f"yaml_document_path {path!r} is outside the manifest's directory" in result.stderr
    assert ok(cli("get", "WorkloadDefinition")) == ["No WorkloadDefinition objects."]


def test_a_reference_to_an_unknown_name_is_an_error_and_nothing_is_written(cli, tmp_path):
    # Given a file whose second document references a definition no one declared
    text = definition_manifest("web") + "---\n"
    text += "kind: WorkloadInstance\nname: web\nworkload_definition: nope\n"
    path = manifest(tmp_path, text)

    # When I apply it, then one line names the document and the missing name
    result = cli("apply", "-f", path)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path}, document 2 (WorkloadInstance/web): no WorkloadDefinition named 'nope', "
        "in the file or the control plane"
    ]
    # And not even the valid first document was written
    assert ok(cli("get", "WorkloadDefinition")) == ["No WorkloadDefinition objects."]


def test_an_api_error_is_one_line_and_exit_code_1(cli, tmp_path):
    # Given an account whose id the API refuses
    path = manifest(tmp_path, INFRA.replace('"123456789012"', '"123"'))

    # When I apply it
    result = cli("apply", "-f", path)

    # Then the API's problem is one line on stderr naming the document, and what was left unapplied
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path}, document 1 (AwsAccount/main): 422 Invalid Object: field 'account_id' must be 12 digits,"
        " not '123' (not applied: KubernetesRuntimeDefinition/prod and 1 more)"
    ]
    assert "Traceback" not in result.output


def test_an_api_error_quotes_a_huge_value_shortened_and_its_status_once(api_url):
    # Given a name far longer than the API takes, and a method a route does not serve
    client = ApiClient(api_url, TOKEN)

    # When the API refuses them, then the detail is cut to a readable length and the status is said once
    with pytest.raises(ApiError) as raised:
        client.request(
            "POST",
            "/v0/aws-accounts",
            json={"name": "a", "account_id": "1" * 5000, "default_region": "us-east-1", "role_arn": "x"},
        )
    assert raised.value.status == 422 and len(str(raised.value)) < 600 and str(raised.value).endswith("characters)")
    with pytest.raises(ApiError) as raised:
        client.request("PUT", "/v0/workload-definitions")
    assert str(raised.value).startswith("405 Method Not Allowed")


def test_wait_for_reconciled_then_delete_wait(cli, tmp_path, reconciling):
    # Given a workload definition applied while a worker reconciles
    ok(cli("apply", "-f", manifest(tmp_path, definition_manifest("web"))))

    # When I wait for it to be reconciled, then it is, and the command says so
    assert ok(cli("wait", "WorkloadDefinition", "web", "--for", "reconciled", "--timeout", "30")) == [
        "WorkloadDefinition/web reconciled"
    ]
    definition = objects(cli, "WorkloadDefinition")["web"]
    assert (definition["observed_generation"], definition["status"]["phase"]) == (1, "Reconciled")
    # And its events tell the story
    assert any("Reconciled" in line for line in ok(cli("events", "WorkloadDefinition", "web")))

    # When I delete it and wait, then it is gone when the command returns
    assert ok(cli("delete", "workload-definition", "web", "--wait", "--timeout", "30")) == [
        "WorkloadDefinition/web deleted"
    ]
    assert objects(cli, "WorkloadDefinition") == {}
    # And waiting for a deletion that already happened returns at once
    assert ok(cli("wait", "WorkloadDefinition", "web", "--for", "deleted")) == ["WorkloadDefinition/web deleted"]


def test_wait_fails_when_the_object_fails(cli, tmp_path, reconciling):
    # Given a definition whose YAML does not parse
    ok(cli("apply", "-f", manifest(tmp_path, "kind: WorkloadDefinition\nname: bad\nyaml_document: 'kind: [x'\n")))

    # When I wait for it, then I am told it failed, and why, with exit code 1
    result = cli("wait", "WorkloadDefinition", "bad", "--for", "reconciled", "--timeout", "30")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: WorkloadDefinition/bad failed: invalid YAML")


def test_wait_times_out_with_a_clear_message(cli, tmp_path):
    # Given a definition no worker will reconcile
    ok(cli("apply", "-f", manifest(tmp_path, definition_manifest("web"))))

    # When I wait a second for it, then I am told it timed out, and where it stands
    result = cli("wait", "WorkloadDefinition", "web", "--for", "reconciled", "--timeout", "1")
    assert result.exit_code == 1
    assert "error: timed out after 1s waiting for WorkloadDefinition/web to be reconciled (phase Pending)" in (
        result.stderr
    )


def test_delete_without_wait_schedules_and_refuses_referenced_objects(cli, tmp_path):
    # Given the stack applied, and no worker to confirm deletions
    path = manifest(tmp_path, STACK)
    ok(cli("apply", "-f", path))

    # When I delete the file's objects without waiting
    result = cli("delete", "-f", path)

    # Then the first is scheduled for deletion, and the next, still referenced, is refused with a hint
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["WorkloadInstance/web deletion scheduled"]
    assert result.stderr.startswith("error: 409 Conflict: KubernetesRuntimeInstance/prod: ")
    assert "--wait deletes each object once those referencing it are gone" in result.stderr
    assert objects(cli, "WorkloadInstance")["web"]["deletion_scheduled"]
    assert "Pending (deleting)" in ok(cli("get", "WorkloadInstance", "web"))[1]


def test_kinds_are_found_by_any_spelling_and_unknown_ones_get_suggestions(cli, tmp_path):
    # Given one workload instance
    ok(cli("apply", "-f", manifest(tmp_path, STACK)))

    # When I name its kind in any usual spelling, then I get it
    for spelling in (
        "WorkloadInstance",
        "workload-instance",
        "workload-instances",
        "workloadinstance",
        "WORKLOAD_INSTANCE",
        "wi",
    ):
        assert ok(cli("get", spelling))[1].startswith("web"), spelling

    # When I misspell it, then one line suggests the close matches
    result = cli("get", "workloadinstanse")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: unknown kind 'workloadinstanse'; did you mean WorkloadInstance, ")


def test_get_follows_pagination_and_filters_by_field(cli, tmp_path, monkeypatch):
    # Given five definitions, listed two per page
    docs = [definition_manifest(f"app-{n}") for n in range(5)]
    ok(cli("apply", "-f", manifest(tmp_path, "---\n".join(docs))))
    monkeypatch.setattr(api_client, "PAGE_SIZE", 2)

    # When I list them, showing the requests
    result = cli("--verbose", "get", "WorkloadDefinition", "-o", "json")

    # Then every page was read
    assert [obj["name"] for obj in json.loads(result.stdout)] == [f"app-{n}" for n in range(5)]
    pages = [line for line in result.stderr.splitlines() if "/v0/workload-definitions?" in line]
    assert len(pages) == 3 and all(line.startswith("GET http://127.0.0.1:") and "-> 200" in line for line in pages)

    # And --field filters on the server, a reference given by name
    ok(cli("apply", "-f", manifest(tmp_path, STACK, "stack.yaml")))
    assert [
        o["name"] for o in json.loads(cli("get", "WorkloadDefinition", "--field", "name=app-3", "-o", "json").stdout)
    ] == ["app-3"]
    by_reference = cli("get", "WorkloadInstance", "--field", "workload_definition=web", "-o", "yaml")
    assert by_reference.exit_code == 0 and "name: web" in by_reference.stdout
    assert cli("get", "WorkloadInstance", "--field", "workload_definition=app-1", "-o", "json").stdout.strip() == "[]"

    # And a --field the kind does not have, or a name given twice, is an error rather than ignored
    for args, error in [
        (("--field", "limit=1"), "error: --field 'limit=1': WorkloadDefinition has no field 'limit' (fields: "),
        (("app-3", "--field", "name=app-4"), "error: the name is given twice: 'app-3' and --field name=app-4"),
        (("--field", "name=a", "--field", "name=b"), "error: --field 'name=b': 'name' is already chosen as 'a'"),
    ]:
        result = cli("get", "WorkloadDefinition", *args)
        assert result.exit_code == 1 and result.stderr.startswith(error), result.output


def test_get_of_a_name_that_is_not_there_is_an_error_as_describe_is(cli, tmp_path):
    # Given one definition, and a stack with an instance of another
    ok(cli("apply", "-f", manifest(tmp_path, definition_manifest("app"))))
    ok(cli("apply", "-f", manifest(tmp_path, STACK, "stack.yaml")))

    # When I get it by name, then it is shown
    assert ok(cli("get", "WorkloadDefinition", "app"))[1].startswith("app")

    # When I get a name that is not there, in any output, then one line says so and the exit code is 1
    for output in ("table", "json"):
        result = cli("get", "WorkloadDefinition", "ap", "-o", output)
        assert (result.exit_code, result.stdout) == (1, ""), result.output
        assert result.stderr.strip().splitlines() == ["error: no WorkloadDefinition named 'ap'"]

    # And a kind without names says so, and how to choose instead
    result = cli("get", "Event", "ap")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: Event objects have no name to get one by; choose with --field FIELD=VALUE ("
    )

    # And a name a --field rules out says which
    result = cli("get", "WorkloadInstance", "web", "--field", "workload_definition=app")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: no WorkloadInstance named 'web' where workload_definition=app"
    ]


def test_events_of_one_object_and_the_latest_of_all(cli, tmp_path):
    # Given two definitions, each with something that happened to it
    ok(cli("apply", "-f", manifest(tmp_path, STACK)))
    definition = objects(cli, "WorkloadDefinition")["web"]
    runtime = objects(cli, "KubernetesRuntimeDefinition")["prod"]
    record_event("WorkloadDefinition", definition["id"], "Parsed", "two documents")
    record_event("KubernetesRuntimeDefinition", runtime["id"], "Waiting", "no cluster yet", type="Warning")

    # When I ask for one object's events, then I see only its own
    one = ok(cli("events", "WorkloadDefinition", "web"))
    assert len(one) == 2 and "Parsed" in one[1] and "two documents" in one[1]

    # When I ask for the latest events, then I see both, naming their objects
    every = ok(cli("events"))
    assert any("KubernetesRuntimeDefinition/prod" in line and "Warning" in line for line in every)
    assert any("WorkloadDefinition/web" in line and "Parsed" in line for line in every)


def test_version_shows_client_and_server(cli):
    lines = ok(cli("version"))
    assert lines[0].startswith("client: ")
    assert lines[1].startswith("server: ") and "(API v0)" in lines[1]


def test_documents_that_reference_each_other_in_a_cycle_are_refused():
    # Given two kinds that reference each other, and one object of each referencing the other
    def kind(name: str, other: str) -> Kind:
        fields = {
            "name": Field(name="name", writable=True, required=True, secret=False, references=None),
            "peer_id": Field(name="peer_id", writable=True, required=False, secret=False, references=other),
        }
        return Kind(
            kind=name,
            plural=name.lower(),
            path=f"/v0/{name.lower()}",
            summary="",
            reconciled=True,
            writable=True,
            fields=fields,
        )

    catalog = Catalog([kind("Left", "Right"), kind("Right", "Left")])
    documents = [
        Document({"kind": "Left", "name": "a", "peer": "b"}, "f.yaml, document 1", Path(".")),
        Document({"kind": "Right", "name": "b", "peer": "a"}, "f.yaml, document 2", Path(".")),
    ]

    # When they are planned, then the error names both documents
    with pytest.raises(ManifestError, match=r"cycle: f.yaml, document 1 \(Left/a\); f.yaml, document 2 \(Right/b\)"):
        plan(documents, catalog)


def test_a_long_chain_of_references_is_planned_referenced_first():
    # Given a kind whose objects reference one another, and 5,000 documents each referencing the next one
    fields = {
        "name": Field(name="name", writable=True, required=True, secret=False, references=None),
        "next_id": Field(name="next_id", writable=True, required=False, secret=False, references="Node"),
    }
    node = Kind(
        kind="Node", plural="nodes", path="/v0/nodes", summary="", reconciled=True, writable=True, fields=fields
    )
    count = 5000
    documents = [
        Document(
            {"kind": "Node", "name": f"n{i}", **({"next": f"n{i + 1}"} if i + 1 < count else {})}, f"d{i}", Path(".")
        )
        for i in range(count)
    ]
    # And two documents that reference nothing in the file, before and after the chain
    documents.insert(0, Document({"kind": "Node", "name": "first"}, "first", Path(".")))
    documents.append(Document({"kind": "Node", "name": "last", "next": "elsewhere"}, "last", Path(".")))

    # When they are planned, then the chain comes last-to-first and the others keep their file order
    names = [m.name for m in plan(documents, Catalog([node]))]
    assert names == ["first", *[f"n{i}" for i in reversed(range(count))], "last"]


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"name": "a"}, "f.yaml, document 1: no 'kind'"),
        ({"kind": 5, "name": "a"}, "f.yaml, document 1: 'kind' must be a string, not int (5)"),
        ({"kind": " ", "name": "a"}, "f.yaml, document 1: 'kind' must not be empty"),
        ({"kind": "Left"}, "f.yaml, document 1 (Left): no 'name'"),
        ({"kind": "Left", "name": 123}, "f.yaml, document 1 (Left/123): 'name' must be a string, not int (123)"),
        ({"kind": "Left", "name": True}, "f.yaml, document 1 (Left/True): 'name' must be a string, not bool (True)"),
        ({"kind": "Left", "name": ""}, "f.yaml, document 1 (Left/): 'name' must not be empty"),
        ({"kind": "Workload", "name": 7}, "f.yaml, document 1 (Workload/7): 'name' must be a string, not int (7)"),
    ],
    ids=["no-kind", "kind-int", "kind-blank", "no-name", "name-int", "name-yes", "name-empty", "workload-name-int"],
)
def test_a_kind_or_name_that_is_not_text_says_what_it_is(document, error):
    # Given a document whose kind or name YAML read as a number, a boolean or nothing
    field = Field(name="name", writable=True, required=True, secret=False, references=None)
    left = Kind(
        kind="Left",
        plural="lefts",
        path="/v0/lefts",
        summary="",
        reconciled=True,
        writable=True,
        fields={"name": field},
    )

    # When it is planned, then the error says what is wrong with it (not that it is missing)
    with pytest.raises(ManifestError) as raised:
        plan([Document(document, "f.yaml, document 1", Path("."))], Catalog([left]))
    assert str(raised.value) == error


def test_a_kind_is_found_by_its_initials_where_they_name_nothing_else():
    # Given core kinds, two of which share their initials, and an extension kind named like another's initials
    def kind(name: str, plural: str) -> Kind:
        return Kind(
            kind=name, plural=plural, path=f"/v0/{plural}", summary="", reconciled=True, writable=True, fields={}
        )

    definition, gateway, group = (
        kind("WorkloadDefinition", "workload-definitions"),
        kind("GatewayDefinition", "gateway-definitions"),
        kind("GroupDirectory", "group-directories"),
    )
    extension = kind("acme.com/v1/Wi", "wis")
    instance = kind("WorkloadInstance", "workload-instances")
    catalog = Catalog([definition, gateway, group, extension, instance])

    # Then initials find their kind, in any case
    assert catalog.lookup("wd") is catalog.lookup("WD") is definition
    # And a kind's own name wins over another's initials
    assert catalog.lookup("wi") is extension
    # And initials two kinds share find neither, naming both
    with pytest.raises(UnknownKind, match=r"'gd' names several kinds \(GatewayDefinition, GroupDirectory\)"):
        catalog.lookup("gd")


@pytest.mark.parametrize(
    ("answers", "args", "error"),
    [
        ({"/version": ["hello"]}, ("version",), "/version gave ['hello']"),
        ({"/version": {"version": "2"}}, ("version",), "/version gave {'version': '2'}"),
        ({"/v0/kinds": {"items": [{"x": 1}]}}, ("get", "wd"), "/v0/kinds gave {'items': [{'x': 1}]}"),
        ({"/v0/kinds": {"kinds": []}}, ("get", "wd"), "/v0/kinds gave {'kinds': []}"),
    ],
    ids=["version-list", "version-other", "kinds-items", "kinds-missing"],
)
def test_a_server_that_is_not_threeport_is_named_as_such(tmp_path, monkeypatch, answers, args, error):
    # Given a JSON server of another kind where the client config points
    def other_server(environ, start_response):
        body = json.dumps(answers.get(environ["PATH_INFO"], {})).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    with served(other_server) as url:
        monkeypatch.setenv("THREEPORT_CONFIG", str(tmp_path / "none.yaml"))
        env = {"THREEPORT_API_URL": url, "THREEPORT_API_TOKEN": TOKEN, "COLUMNS": "200"}

        # When I use the client against it
        result = CliRunner().invoke(app, list(args), env=env)

    # Then one line says it does not answer as Threeport, and the exit code is 1
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (f"error: {url} does not answer as a Threeport API ({error})")


def test_wait_gives_up_at_its_timeout_even_when_the_api_stops_answering(tmp_path, monkeypatch):
    # Given an API that lists an object but never answers a read of it (until released)
    release = threading.Event()
    kind = {"kind": "Thing", "plural": "things", "path": "/v0/things", "reconciled": True, "fields": []}
    thing = {"id": "t1", "name": "web", "generation": 1, "observed_generation": 0, "status": {}}

    def hanging_api(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/v0/things/t1":
            release.wait(120)
        answer = {"items": [kind]} if path == "/v0/kinds" else {"items": [thing]} if path == "/v0/things" else thing
        body = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    # (and a client whose requests wait 30 s for an answer otherwise)
    monkeypatch.setenv("THREEPORT_CONFIG", str(tmp_path / "none.yaml"))
    with served(hanging_api) as url:
        env = {"THREEPORT_API_URL": url, "THREEPORT_API_TOKEN": TOKEN, "COLUMNS": "200"}

        # When I wait two seconds for it
        started = time.monotonic()
        result = CliRunner().invoke(app, ["wait", "Thing", "web", "--for", "reconciled", "--timeout", "2"], env=env)
        waited = time.monotonic() - started
        release.set()

    # Then the wait ends at its own timeout, not the request's, saying it timed out
    assert result.exit_code == 1
    assert "error: timed out after 2s waiting for Thing/web to be reconciled (phase Pending)" in result.stderr
    assert waited < api_client.DEFAULT_TIMEOUT / 2


def test_records_are_not_applied_and_the_error_says_how_they_are_written(cli, tmp_path):
    # Given a route record, which a client creates through the API, and an event, which only the control plane writes
    route = "kind: ExtensionApiRoute\nextension: acmecorp.com\nprefix: /acmecorp.com/v1/\nupstream: http://acme:8080\n"
    event = "kind: Event\nreason: Made\n"

    # When I apply them, then each error says how such objects are written, and nothing is
    result = cli("apply", "-f", manifest(tmp_path, route, "route.yaml"))
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        "ExtensionApiRoute records have no name to apply them by; create them with POST /v0/extension-api-routes"
    )
    result = cli("apply", "-f", manifest(tmp_path, event, "event.yaml"))
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("Event objects are written by the control plane, not applied")
    assert ok(cli("get", "ExtensionApiRoute")) == ["No ExtensionApiRoute objects."]
