"""The acmecorp.com/v1 extension: a FancyWorkload is an app from one container image.

Its controller turns each FancyWorkload into core objects through the
control plane's API: a WorkloadDefinition holding a Deployment (and a
Service when a port is given) and a WorkloadInstance of it on the named
runtime (the default runtime when none is named). It reports the instance
in its status and, on deletion, removes both, waiting until the core has
torn them down. Run it with ``threeport worker --extension fancy_workload``
(this directory on ``PYTHONPATH``).
"""

from __future__ import annotations

from typing import Any, Optional

import yaml

from tasks.api_client import ApiClient
from tasks.extensions import Extension, ObjectView, PermanentError, TemporaryError

acme = Extension("acmecorp.com", "v1", description="FancyWorkload: an app from one image, run as a core workload.")

SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "minLength": 1, "description": "The container image to run."},
        "replicas": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1, "description": "How many copies."},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "The port to expose, if any."},
        "runtime": {
            "type": "string",
            "description": "The KubernetesRuntimeInstance by name (default runtime if none).",
        },
    },
    "required": ["image"],
}

#: How long to wait before looking again at core objects being reconciled or torn down.
POLL_SECONDS = 1.0


@acme.kind("FancyWorkload", schema=SCHEMA, summary="An app from one container image, deployed as a core workload.")
class FancyWorkloads:
    def reconcile(self, obj: ObjectView, api: ApiClient) -> dict[str, Any]:
        name = _core_name(obj)
        definition = _apply(api, "/v0/workload-definitions", name, {"yaml_document": _manifests(obj)})
        fields = {"workload_definition_id": definition["id"]}
        if obj.get("runtime"):
            fields["kubernetes_runtime_instance_id"] = _runtime_id(api, obj["runtime"])
        instance = _apply(api, "/v0/workload-instances", name, fields)
        if instance["creation_failed"]:
            raise PermanentError(f"WorkloadInstance {name} failed: {instance['status'].get('message')}")
        if not instance["reconciled"]:  # applied to the cluster (its health is then watched by the core)
            raise TemporaryError(f"waiting for WorkloadInstance {name} to be deployed", delay=POLL_SECONDS)
        return {
            "workload_definition_id": definition["id"],
            "workload_instance_id": instance["id"],
            "health": instance["status"].get("health"),
        }

    def delete(self, obj: ObjectView, api: ApiClient) -> None:
        name = _core_name(obj)
        for path in ("/v0/workload-instances", "/v0/workload-definitions"):  # the instance first: it references
            found = _find(api, path, name)
            if found is not None:
                if not found["deletion_scheduled"]:
                    api.request("DELETE", f"{path}/{found['id']}")
                raise TemporaryError(f"waiting for {path.rsplit('/', 1)[1]} {name} to be torn down", delay=POLL_SECONDS)


def _core_name(obj: ObjectView) -> str:
    return f"fancy-{obj.name}"


def _manifests(obj: ObjectView) -> str:
    labels = {"app": obj.name}
    container: dict[str, Any] = {"name": "app", "image": obj.image}
    if obj.get("port"):
        container["ports"] = [{"containerPort": obj.port}]
    documents: list[dict[str, Any]] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": obj.name, "labels": labels},
            "spec": {
                "replicas": obj.get("replicas") or 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        }
    ]
    if obj.get("port"):
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": obj.name, "labels": labels},
                "spec": {"selector": labels, "ports": [{"port": obj.port, "targetPort": obj.port}]},
            }
        )
    return yaml.safe_dump_all(documents, sort_keys=False)


def _find(api: ApiClient, path: str, name: str) -> Optional[dict[str, Any]]:
    return next(iter(api.get_json(path, name=name, limit=1)["items"]), None)


def _apply(api: ApiClient, path: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The object of ``path`` named ``name`` with ``fields``: created, changed, or as it is."""
    found = _find(api, path, name)
    if found is None:
        return api.request("POST", path, json={"name": name, **fields}).json()
    changes = {key: value for key, value in fields.items() if found.get(key) != value}
    if not changes:
        return found
    headers = {"If-Match": f'"{found["resource_version"]}"'}
    return api.request("PATCH", f"{path}/{found['id']}", json=changes, headers=headers).json()


def _runtime_id(api: ApiClient, runtime: str) -> str:
    found = _find(api, "/v0/kubernetes-runtime-instances", runtime)
    if found is None:
        raise TemporaryError(f"no KubernetesRuntimeInstance named {runtime!r} yet", delay=5 * POLL_SECONDS)
    return found["id"]
