"""Secrets end to end: SecretDefinitions kept in AWS Secrets Manager (moto over HTTP), SecretInstances delivered
by the External Secrets Operator, installed on the cluster (the Kubernetes API stand-in, tests/kube.py) while a
SecretInstance there needs it. Real PostgreSQL, real NATS, a real Dramatiq worker running the reconcile actor,
and the API in process, publishing what it writes to the test's broker.

The stand-in runs no controllers: no operator copies anything, so the tests
look at what it is told to do (the stores and the ExternalSecrets).
"""

from __future__ import annotations

import base64
import functools
import json
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from dramatiq import Worker
from falcon import testing

from api.app import create_app
from api.settings import Settings, hash_token
from models import (
    AwsAccount,
    AwsEksKubernetesRuntimeDefinition,
    AwsEksKubernetesRuntimeInstance,
    SecretDefinition,
    SecretInstance,
    WorkloadInstance,
    db,
    store,
)
from tasks import actor, aws_secrets, kubernetes_runtimes, workload_instances
from tasks.actor import declare_actors
from tasks.aws_adapter import TAG_ID, TAG_KIND, tag_dict
from tasks.kubernetes_adapter import RetryPolicy
from tasks.secret_instances import ROLE_POLICY_NAME, SECRET_LABEL
from tasks.support_services import COMPONENT_LABEL, COMPONENTS, RECORD_NAME, RECORD_NAMESPACE
from workers.outbox_relay import publish_rows

from .aws import ACCESS_KEYS, ACCOUNT_ID
from .kube import runtime_for
from .reconciling import observed, reconciled, wait_for
from .test_workload_instances import CONFIG_MAP, definition, instance, namespace_of

TOKEN = "secrets-test-token"
REGION = "eu-west-1"
PASSWORD = "correct-horse-battery-staple"
ESO = "external-secrets.io/v1beta1"
OPERATOR = "/apis/apps/v1/namespaces/external-secrets/deployments/external-secrets"
OIDC_ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"


# Fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture
def reconciling(database, broker, locks, monkeypatch):
    """The reconcile actor on the ``aws`` and ``workloads`` queues, with short backoffs, in a worker."""
    monkeypatch.setattr(kubernetes_runtimes, "RETRY_POLICY", RetryPolicy(attempts=2, initial=0.01, ceiling=0.05))
    monkeypatch.setattr(workload_instances, "HEALTH_POLL", 0.2)
    monkeypatch.setattr(actor, "DEPENDENCY_BACKOFF", (0.1, 0.3))
    declare_actors(broker, ["aws", "workloads"], locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()
    kubernetes_runtimes.forget_clusters()


@pytest.fixture
def client(reconciling, broker):
    """The API, publishing the outbox rows of its writes to the test's broker."""
    app = create_app(
        Settings(token_hashes=frozenset({hash_token(TOKEN)})), publish=functools.partial(publish_rows, broker)
    )
    return testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def moto(aws_endpoint):
    """boto3 clients straight to moto, to look at what the reconcilers made."""

    def client(service: str):
        return boto3.client(
            service, region_name=REGION, endpoint_url=aws_endpoint, aws_access_key_id="x", aws_secret_access_key="y"
        )

    return client


@pytest.fixture
def account(reconciling, broker, aws_endpoint) -> AwsAccount:
    """The default AWS account, on moto, reconciled by its own reconciler."""
    fields = {"name": "main", "account_id": ACCOUNT_ID, "default_region": REGION, "default_account": True}
    written = store.create(AwsAccount, {**fields, "endpoint_url": aws_endpoint, **ACCESS_KEYS})
    publish_rows(broker, written.outbox)
    return wait_for(lambda: reconciled(AwsAccount, written.obj.id))


def post(client, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    result = client.simulate_post(f"/v0/{plural}", json=body)
    assert result.status_code == 201, result.json
    return result.json


def secret_definition(client, name: str = "db-credentials", **data: str) -> SecretDefinition:
    """A SecretDefinition in the default account, once reconciled."""
    created = post(client, "secret-definitions", {"name": name, "data": data or {"password": PASSWORD}})
    return wait_for(lambda: reconciled(SecretDefinition, created["id"]))


def secret_instance(client, definition: SecretDefinition, workload: WorkloadInstance, name: str) -> SecretInstance:
    """A SecretInstance, once its reconciler has observed it."""
    fields = {"name": name, "secret_definition_id": str(definition.id), "workload_instance_id": str(workload.id)}
    created = post(client, "secret-instances", fields)
    done = wait_for(lambda: observed(SecretInstance, created["id"]))
    assert done.status["phase"] == "Reconciled", done.status
    return done


def deployed(broker, runtime, name: str) -> WorkloadInstance:
    """A workload instance of one ConfigMap on ``runtime``, reconciled and with its namespace."""
    obj = instance(broker, definition(broker, CONFIG_MAP, name=name), runtime, name=name)
    namespace_of(obj.id)
    return wait_for(lambda: reconciled(WorkloadInstance, obj.id))


def delete(client, plural: str, model, obj_id) -> None:
    """Delete through the API and wait until the reconciler has confirmed it."""
    assert client.simulate_delete(f"/v0/{plural}/{obj_id}").status_code == 202
    wait_for(lambda: model.get_or_none(model.id == obj_id) is None)


def remote_value(moto, name: str) -> dict[str, str]:
    return json.loads(moto("secretsmanager").get_secret_value(SecretId=name)["SecretString"])


def error_code(call) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"]


def record(kube) -> dict[str, list[str]]:
    live = kube.live("v1", "ConfigMap", RECORD_NAMESPACE, RECORD_NAME) or {}
    return {component: json.loads(ids) for component, ids in (live.get("data") or {}).items()}


def operator_objects(kube) -> list[str]:
    """Every live object labelled as part of the external-secrets supporting service."""
    found = []
    kinds = [("apiextensions.k8s.io/v1", "CustomResourceDefinition"), ("v1", "Namespace"), ("apps/v1", "Deployment")]
    kinds += [("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "ClusterRole")]
    for api_version, kind in kinds:
        for name in kube.names(api_version, kind):
            namespace, _, short = name.rpartition("/")
            labels = kube.live(api_version, kind, namespace or None, short)["metadata"].get("labels") or {}
            if labels.get(COMPONENT_LABEL) == "external-secrets":
                found.append(f"{kind}/{name}")
    return found


def made_for(kube, name: str, kind: str = "ClusterSecretStore") -> str:
    """The SecretInstance a live object (``[namespace/]name``) was made for."""
    namespace, _, short = name.rpartition("/")
    api_version = "v1" if kind == "Secret" else ESO
    return kube.live(api_version, kind, namespace or None, short)["metadata"]["labels"][SECRET_LABEL]


def force_sync(kube, namespace: str, name: str) -> str:
    """The version an ExternalSecret tells the operator to fetch."""
    return kube.live(ESO, "ExternalSecret", namespace, name)["metadata"]["annotations"]["force-sync"]


def publish_pending(broker) -> None:
    """Publish what reconcilers asked for (the relay's job in a deployment)."""
    publish_rows(broker, store.pending_outbox(older_than_seconds=0, limit=100))


# Definitions ------------------------------------------------------------------------------------


def test_a_definition_keeps_its_values_in_secrets_manager_and_the_api_never_shows_them(client, account, moto):
    # When a definition naming no account is declared through the API
    body = {"name": "db-credentials", "data": {"username": "app", "password": PASSWORD}}
    created = post(client, "secret-definitions", body)

    # Then no answer of the API holds the values: the create, a get, a list
    got = client.simulate_get(f"/v0/secret-definitions/{created['id']}").json
    listed = client.simulate_get("/v0/secret-definitions").json
    for shown in (created, got, *listed["items"]):
        assert "data" not in shown and PASSWORD not in json.dumps(shown)
    # And the row holds them encrypted, while the model reads them back
    stored = db.execute_sql("SELECT data FROM secret_definitions WHERE id = %s", (created["id"],)).fetchone()[0]
    assert stored and PASSWORD not in stored and "username" not in stored
    assert store.get(SecretDefinition, created["id"]).data == body["data"]

    # And, reconciled, the values are one secret of the default account, named and tagged after the definition
    done = wait_for(lambda: reconciled(SecretDefinition, created["id"]))
    inventory = done.status["inventory"]
    assert (inventory["name"], inventory["region"], inventory["account_id"]) == (
        "threeport/db-credentials",
        REGION,
        str(account.id),
    )
    assert remote_value(moto, "threeport/db-credentials") == body["data"]
    described = moto("secretsmanager").describe_secret(SecretId="threeport/db-credentials")
    assert described["ARN"] == inventory["arn"]
    assert {TAG_KIND: "SecretDefinition", TAG_ID: created["id"]}.items() <= tag_dict(described["Tags"]).items()
    assert PASSWORD not in json.dumps(client.simulate_get(f"/v0/secret-definitions/{created['id']}").json)

    # When its data changes
    patched = client.simulate_patch(f"/v0/secret-definitions/{created['id']}", json={"data": {"password": "rotated"}})
    assert patched.status_code == 200 and patched.json["generation"] == 2 and "rotated" not in json.dumps(patched.json)

    # Then the secret's value follows, as a new version recorded in the status
    rotated = wait_for(lambda: reconciled(SecretDefinition, created["id"]))
    assert rotated.generation == 2 and remote_value(moto, "threeport/db-credentials") == {"password": "rotated"}
    current = moto("secretsmanager").get_secret_value(SecretId="threeport/db-credentials")["VersionId"]
    assert rotated.status["version_id"] == current != done.status["version_id"]

    # When it is reconciled again (a duplicate message after a crash, say), then it writes no new version
    versions = moto("secretsmanager").list_secret_version_ids(SecretId="threeport/db-credentials")["Versions"]
    aws_secrets.reconcile_secret_definition(store.get(SecretDefinition, created["id"]))
    again = moto("secretsmanager").list_secret_version_ids(SecretId="threeport/db-credentials")["Versions"]
    assert len(again) == len(versions)


def test_a_secret_of_that_name_made_by_someone_else_is_never_touched(client, account, moto):
    # Given a secret named as a definition's would be, not made by threeport
    moto("secretsmanager").create_secret(Name="threeport/shared", SecretString='{"theirs": "x"}')

    # When a definition of that name is declared
    created = post(client, "secret-definitions", {"name": "shared", "data": {"ours": "y"}})

    # Then it fails saying why, and the other secret keeps its value
    failed = wait_for(lambda: observed(SecretDefinition, created["id"]))
    assert failed.creation_failed and "not this SecretDefinition's" in failed.status["message"]
    assert remote_value(moto, "threeport/shared") == {"theirs": "x"}

    # And deleting the definition leaves that secret alone
    delete(client, "secret-definitions", SecretDefinition, created["id"])
    assert remote_value(moto, "threeport/shared") == {"theirs": "x"}


# Instances --------------------------------------------------------------------------------------


def test_secret_instances_share_the_operator_and_each_gets_its_store_and_external_secret(
    kube, client, broker, account, moto
):
    # Given two workloads on one cluster, and a definition
    runtime = runtime_for(kube.url)
    web, api = deployed(broker, runtime, "web"), deployed(broker, runtime, "api")
    definition = secret_definition(client)

    # When each gets a SecretInstance of it
    first = secret_instance(client, definition, web, "db-credentials")
    second = secret_instance(client, definition, api, "api-db")

    # Then the operator is installed once, pinned, with its CRDs, and both instances are recorded as its users
    assert sum(1 for method, path in kube.requests() if method == "PATCH" and path == OPERATOR) == 1
    deployment = kube.live("apps/v1", "Deployment", "external-secrets", "external-secrets")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/external-secrets/external-secrets:{COMPONENTS['external-secrets'].version}"
    crds = kube.names("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    assert {"externalsecrets.external-secrets.io", "secretstores.external-secrets.io"} <= set(crds)
    assert record(kube) == {"external-secrets": sorted([str(first.id), str(second.id)])}

    # And in each workload's namespace an ExternalSecret extracts the definition's secret into a Secret named after
    # the instance, through a ClusterSecretStore that serves that namespace only, with the account's access keys in
    # a Secret of the operator's namespace (never in the workload's)
    for done, workload in ((first, web), (second, api)):
        namespace = workload.status["namespace"]
        assert (done.status["secret_name"], done.status["namespace"]) == (done.name, namespace)
        assert done.status["remote_key"] == "threeport/db-credentials"
        external = kube.live(ESO, "ExternalSecret", namespace, done.name)
        assert external["metadata"]["labels"][SECRET_LABEL] == str(done.id)
        assert external["spec"]["dataFrom"] == [{"extract": {"key": "threeport/db-credentials"}}]
        assert external["spec"]["target"]["name"] == done.name
        assert external["spec"]["target"]["template"]["metadata"]["labels"][SECRET_LABEL] == str(done.id)
        assert force_sync(kube, namespace, done.name) == definition.status["version_id"]
        store_name = external["spec"]["secretStoreRef"]["name"]
        assert external["spec"]["secretStoreRef"]["kind"] == "ClusterSecretStore"
        spec = kube.live(ESO, "ClusterSecretStore", None, store_name)["spec"]
        assert spec["conditions"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
        ]
        provider = spec["provider"]["aws"]
        assert (provider["service"], provider["region"]) == ("SecretsManager", REGION)
        keys_ref = provider["auth"]["secretRef"]["accessKeyIDSecretRef"]
        assert keys_ref["namespace"] == "external-secrets"
        keys = kube.live("v1", "Secret", "external-secrets", keys_ref["name"])["data"]
        assert base64.b64decode(keys[keys_ref["key"]]).decode() == ACCESS_KEYS["access_key_id"]
        assert kube.names("v1", "Secret", namespace) == []
        assert PASSWORD not in json.dumps(done.status)

    # When the definition's data changes, then each ExternalSecret is told to fetch the new version
    patched = client.simulate_patch(f"/v0/secret-definitions/{definition.id}", json={"data": {"password": "new"}})
    assert patched.status_code == 200
    version = wait_for(lambda: reconciled(SecretDefinition, definition.id))
    assert version.generation == 2
    publish_pending(broker)
    for done, workload in ((first, web), (second, api)):
        fetching = functools.partial(force_sync, kube, workload.status["namespace"], done.name)
        wait_for(lambda: fetching() == version.status["version_id"])  # noqa: B023 (waited for within the loop)

    # And the definition cannot be deleted while instances use it: a 409 naming one
    refused = client.simulate_delete(f"/v0/secret-definitions/{definition.id}")
    assert refused.status_code == 409 and "db-credentials" in refused.json["detail"]

    # When the first instance is deleted (the operator had made its Secret, labelled as told)
    web_namespace = web.status["namespace"]
    made = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": first.name, "namespace": web_namespace}}
    kube.put(made | {"metadata": {**made["metadata"], "labels": {SECRET_LABEL: str(first.id)}}})
    delete(client, "secret-instances", SecretInstance, first.id)

    # Then everything it made is gone, the Secret the operator made too, and the operator stays for the other
    assert kube.names(ESO, "ExternalSecret") == [f"{api.status['namespace']}/api-db"]
    assert [made_for(kube, name) for name in kube.names(ESO, "ClusterSecretStore")] == [str(second.id)]
    assert kube.names("v1", "Secret", web_namespace) == []
    assert [made_for(kube, name, "Secret") for name in kube.names("v1", "Secret")] == [str(second.id)]
    assert record(kube) == {"external-secrets": [str(second.id)]}
    assert kube.live("apps/v1", "Deployment", "external-secrets", "external-secrets") is not None

    # When the last instance is deleted, then the operator goes, CRDs and all
    delete(client, "secret-instances", SecretInstance, second.id)
    assert kube.names(ESO, "ExternalSecret") == [] and operator_objects(kube) == []
    assert record(kube) == {}

    # And the definition may go now, and its secret with it
    delete(client, "secret-definitions", SecretDefinition, definition.id)
    code = error_code(lambda: moto("secretsmanager").describe_secret(SecretId="threeport/db-credentials"))
    assert code == "ResourceNotFoundException"


def test_on_an_eks_runtime_the_operator_reads_the_secret_with_a_role_only_its_service_account_assumes(
    kube, client, broker, account, moto
):
    # Given a workload on a runtime that is an EKS cluster whose OIDC issuer is known
    runtime = runtime_for(kube.url)
    eks = store.create(AwsEksKubernetesRuntimeDefinition, {"name": "eks", "aws_account_id": account.id})
    cluster = store.create(
        AwsEksKubernetesRuntimeInstance,
        {
            "name": "eks-1",
            "aws_eks_kubernetes_runtime_definition_id": eks.obj.id,
            "kubernetes_runtime_instance_id": runtime.id,
        },
    )
    store.merge_status(AwsEksKubernetesRuntimeInstance, cluster.obj.id, {"oidc_issuer": OIDC_ISSUER})
    web = deployed(broker, runtime, "web")
    namespace = web.status["namespace"]
    definition = secret_definition(client)

    # When it gets a SecretInstance
    done = secret_instance(client, definition, web, "db-credentials")

    # Then its SecretStore authenticates as a ServiceAccount annotated with an IAM role, and no keys are copied
    external = kube.live(ESO, "ExternalSecret", namespace, "db-credentials")
    store_name = external["spec"]["secretStoreRef"]["name"]
    provider = kube.live(ESO, "SecretStore", namespace, store_name)["spec"]["provider"]["aws"]
    account_name = provider["auth"]["jwt"]["serviceAccountRef"]["name"]
    service_account = kube.live("v1", "ServiceAccount", namespace, account_name)
    role_name = done.status["role"]["name"]
    role_arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{role_name}"
    assert service_account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role_arn
    assert kube.names("v1", "Secret") == [] and done.status["auth"].startswith("IRSA")

    # And the role trusts that ServiceAccount only, through the cluster's OIDC provider, and reads only the secret
    iam = moto("iam")
    role = iam.get_role(RoleName=role_name)["Role"]
    assert tag_dict(role["Tags"])[TAG_ID] == str(done.id)
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    provider_host = OIDC_ISSUER.removeprefix("https://")
    assert trust["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{provider_host}"}
    assert trust["Condition"]["StringEquals"][f"{provider_host}:sub"] == (
        f"system:serviceaccount:{namespace}:{account_name}"
    )
    policy = iam.get_role_policy(RoleName=role_name, PolicyName=ROLE_POLICY_NAME)["PolicyDocument"]
    [statement] = (json.loads(policy) if isinstance(policy, str) else policy)["Statement"]
    assert statement["Resource"] == definition.status["inventory"]["arn"]
    assert "secretsmanager:GetSecretValue" in statement["Action"]

    # When the instance is deleted, then the role goes with its ServiceAccount
    delete(client, "secret-instances", SecretInstance, done.id)
    assert error_code(lambda: iam.get_role(RoleName=role_name)) == "NoSuchEntity"
    assert kube.names("v1", "ServiceAccount", namespace) == []
