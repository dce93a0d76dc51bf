"""A Kubernetes API server STAND-IN for the tests: kmock's ``KubernetesEmulator``, extended, over real HTTP.

No real cluster can run on the build machines, so the Kubernetes adapter and
the reconcilers are tested with the real ``kubernetes`` client, over real
HTTP on a loopback port, against this stand-in. It is not Kubernetes: it is
what the adapter needs of one, on top of kmock (an in-memory Kubernetes API
by the author of kopf).

What it does:

- discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>``,
  ``/version``) for the kinds in :data:`RESOURCES`;
- objects in memory (kmock's ``objects``, each with its history of
  versions): create, get, list, delete, and ``PATCH`` as server-side apply
  (``application/apply-patch+yaml``: creates what is missing; fields a field
  manager applied before and no longer applies are removed; nothing is
  written when nothing changes, so ``resourceVersion`` stays), as a merge
  patch (strategic merge patches are treated as merge patches) or a JSON
  patch; the ``status`` subresource; an applied or merge patch carrying
  ``metadata.resourceVersion`` is a precondition (409 ``Conflict`` when the
  object is at another version), as on a real server;
- what the server owns in ``metadata``: ``uid``, ``resourceVersion`` (one
  counter), ``generation`` (bumped when anything besides metadata and status
  changes), ``creationTimestamp``; writes to the main resource keep
  ``status``;
- label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``,
  ``!key``) and field selectors (dotted paths, ``=``, ``!=``) on lists;
- namespaces: a namespaced object needs its namespace (404 otherwise, as a
  real server says); ``default`` and ``kube-system`` exist; deleting a
  namespace deletes what is in it;
- names must be lowercase RFC 1123 names (422 ``Invalid`` otherwise), and a
  body's name must match the URL's (400);
- a bearer token, when :attr:`KubeStandIn.token` is set (401 otherwise);
- faults: :meth:`KubeApi.fail` answers the next N matching requests with a
  status of the test's choosing (409, 500, 503…) before touching anything
  (:meth:`KubeApi.clear_faults` stops them);
- test hooks: :meth:`KubeApi.put` (pods, events, nodes), :meth:`KubeApi.set_status`
  (a Deployment's ready replicas…), :meth:`KubeApi.live`, :meth:`KubeApi.names`,
  :meth:`KubeApi.versions`, :meth:`KubeApi.requests`.

Its limits: no controllers (a Deployment makes no ReplicaSet or Pod, and has
no status until a test sets one), no garbage collection by owner
references, no finalizers (deletion is immediate, a namespace never shows
``Terminating``), no admission or schema validation beyond names, no
field-ownership conflicts between managers (as if always forced), lists
are one page (``limit`` is ignored), ``resourceVersion`` preconditions are
checked on patches only (not on deletes), a CustomResourceDefinition is
stored but serves nothing (the kinds of :data:`RESOURCES`, cert-manager's
included, are served whether or not their CRD was applied), and there are no
watches. Over TLS, a request without a client certificate has its connection
dropped (a real API server would answer 401).

How it extends kmock: it keeps kmock's HTTP server, request log, discovery
and object store (``objects``), and replaces the request parser (kmock's
cannot parse ``/api/v1/namespaces[/<name>]``) and the serving of object
requests (kmock's emulator merges dicts on PATCH and has no server-side
apply, selectors, server metadata or errors in Kubernetes' shape).

``kube_api`` is the session's server (plain HTTP); ``kube`` empties it for
each test (two nodes, the two namespaces) and gives it. ``kube_tls`` is
another one, for a module, over HTTPS with a CA of its own and client
certificates required. ``runtime_for`` makes a KubernetesRuntimeInstance
pointing at a stand-in. ``--kubeconfig PATH`` (or
``KUBECONFIG``) names a real cluster for the opt-in tests (``real_kubeconfig``).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import ipaddress
import json
import os
import re
import ssl
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import aiohttp.test_utils
import aiohttp.web
import attrs
import jsonpatch
import kmock
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from models import KubernetesRuntimeDefinition, KubernetesRuntimeInstance, store

__all__ = [
    "RESOURCES",
    "KubeStandIn",
    "KubeApi",
    "kube_api",
    "kube",
    "kube_tls",
    "TlsMaterial",
    "runtime_for",
    "real_kubeconfig",
    "pytest_addoption",
]

#: The kinds the stand-in serves: (apiVersion, kind) → (plural, namespaced, has a status subresource).
RESOURCES: dict[tuple[str, str], tuple[str, bool, bool]] = {
    ("v1", "Namespace"): ("namespaces", False, True),
    ("v1", "Node"): ("nodes", False, True),
    ("v1", "ConfigMap"): ("configmaps", True, False),
    ("v1", "Secret"): ("secrets", True, False),
    ("v1", "Service"): ("services", True, True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True, False),
    ("v1", "Pod"): ("pods", True, True),
    ("v1", "Event"): ("events", True, False),
    ("apps/v1", "Deployment"): ("deployments", True, True),
    ("apps/v1", "StatefulSet"): ("statefulsets", True, True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True, True),
    ("apps/v1", "ReplicaSet"): ("replicasets", True, True),
    ("batch/v1", "Job"): ("jobs", True, True),
    ("networking.k8s.io/v1", "Ingress"): ("ingresses", True, True),
    ("networking.k8s.io/v1", "IngressClass"): ("ingressclasses", False, False),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False, False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False, False),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True, False),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True, False),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False, True),
    # cert-manager's kinds, served whether or not their CustomResourceDefinitions were applied
    ("cert-manager.io/v1", "ClusterIssuer"): ("clusterissuers", False, True),
    ("cert-manager.io/v1", "Issuer"): ("issuers", True, True),
    ("cert-manager.io/v1", "Certificate"): ("certificates", True, True),
    # External Secrets' kinds, likewise
    ("external-secrets.io/v1beta1", "ExternalSecret"): ("externalsecrets", True, True),
    ("external-secrets.io/v1beta1", "SecretStore"): ("secretstores", True, True),
    ("external-secrets.io/v1beta1", "ClusterSecretStore"): ("clustersecretstores", False, True),
}
_VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
_NAMESPACES = kmock.resource("", "v1", "namespaces")
#: metadata fields only the server writes.
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def resource_of(api_version: str, kind: str) -> kmock.resource:
    """kmock's resource for a kind of :data:`RESOURCES`."""
    group, _, version = api_version.rpartition("/")
    return kmock.resource(group, version, RESOURCES[(api_version, kind)][0])


class _Failure(Exception):
    """An answer with a Kubernetes ``Status`` instead of an object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@attrs.define
class _Fault:
    status: int
    method: Optional[str]
    path: Optional[re.Pattern]
    times: int
    reason: str
    message: str


@attrs.define(kw_only=True)
class KubeStandIn(kmock.KubernetesEmulator):
    """kmock's emulator with what the adapter needs of a Kubernetes API server (see the module's docstring)."""

    #: When set, every request must carry ``Authorization: Bearer <token>``.
    token: Optional[str] = None
    _faults: list[_Fault] = attrs.field(factory=list, init=False)
    _applied: dict[tuple, dict] = attrs.field(factory=dict, init=False)
    _version: int = attrs.field(default=0, init=False)
    _infos: dict[kmock.resource, tuple[str, str, bool, bool]] = attrs.field(factory=dict, init=False)
    _mark: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for (api_version, kind), (plural, namespaced, status) in RESOURCES.items():
            group, _, version = api_version.rpartition("/")
            key = kmock.resource(group, version, plural)
            self.resources[key] = kmock.ResourceInfo(
                kind=kind,
                namespaced=namespaced,
                singular=kind.lower(),
                verbs=_VERBS,
                subresources={"status"} if status else set(),
            )
            self._infos[key] = (api_version, kind, namespaced, status)

    # Test hooks (run in the server's loop: see KubeApi) ------------------------------------

    def reset(self, *, nodes: int = 2) -> None:
        """Forget every object, fault and token; then two namespaces and ``nodes`` nodes."""
        self.objects.clear()
        self._applied.clear()
        self._faults.clear()
        self.token = None
        self._mark = len(self._requests)
        for name in ("default", "kube-system"):
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for index in range(nodes):
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{index + 1}"}}
            self.put(node | {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as it is (server metadata added): for what controllers would make (pods, events, nodes)."""
        resource = resource_of(obj["apiVersion"], obj["kind"])
        metadata = obj["metadata"]
        key = (resource, metadata.get("namespace") if self._infos[resource][2] else None, metadata["name"])
        return self._store(key, copy.deepcopy(obj), self._live(key), keep_status=False)

    def set_status(self, api_version: str, kind: str, namespace: Optional[str], name: str, status: dict) -> None:
        """Replace an object's ``status`` (what its controller would report)."""
        key = (resource_of(api_version, kind), namespace, name)
        live = self._live(key)
        if live is None:
            raise KeyError(f"no {kind} {namespace}/{name}")
        self._store(key, {**copy.deepcopy(live), "status": copy.deepcopy(status)}, live, keep_status=False)

    def fail(self, status: int, *, method: Optional[str], path: Optional[str], times: int, message: str) -> None:
        reason = {401: "Unauthorized", 403: "Forbidden", 409: "Conflict", 422: "Invalid", 429: "TooManyRequests"}
        pattern = re.compile(path) if path else None
        fault = _Fault(
            status, method.upper() if method else None, pattern, times, reason.get(status, "InternalError"), message
        )
        self._faults.append(fault)

    def pending_faults(self) -> int:
        return sum(fault.times for fault in self._faults)

    def live_object(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[dict]:
        resource = resource_of(api_version, kind)
        live = self._live((resource, namespace if self._infos[resource][2] else None, name))
        return copy.deepcopy(live) if live is not None else None

    def live_names(self, api_version: str, kind: str, namespace: Optional[str] = None) -> list[str]:
        resource = resource_of(api_version, kind)
        return sorted(
            f"{ns}/{name}" if ns and namespace is None else name
            for (res, ns, name), obj in self.objects.items()
            if res == resource and not obj.deleted and (namespace is None or ns == namespace)
        )

    def version_count(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> int:
        """How many times the object was written (its history's length)."""
        key = (resource_of(api_version, kind), namespace, name)
        return len(self.objects[key].history) if key in self.objects else 0

    def requests_since_reset(self) -> list[tuple[str, str]]:
        return [(str(r.method.value), r.url.path) for r in self._requests[self._mark :]]

    # Serving ---------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's entry point with a path parser of our own: kmock's cannot parse ``/api/v1/namespaces[/name]``."""
        await raw_request.read()
        try:
            request = await _parse_request(raw_request, id=len(self._requests))
            self._requests.append(request)
            return await self._handle(request)
        except Exception as exc:  # a bug here must reach the test as a 500, not a dropped connection
            return await self._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        try:
            self._authenticate(request)
            self._inject_fault(request)
            resource = request.resource
            if resource is None or resource.plural is None:
                return await super()._handle(request)  # discovery, /version: kmock's own
            if resource not in self._infos:
                raise _Failure(404, "NotFound", "the server could not find the requested resource")
            payload, code = self._serve(request, resource)
        except _Failure as failure:
            return _status_response(failure.code, failure.reason, failure.message)
        return aiohttp.web.json_response(payload, status=code)

    def _authenticate(self, request: kmock.Request) -> None:
        if self.token is None:
            return
        given = {k.lower(): v for k, v in request.headers.items()}.get("authorization")
        if given != f"Bearer {self.token}":
            raise _Failure(401, "Unauthorized", "Unauthorized")

    def _inject_fault(self, request: kmock.Request) -> None:
        for fault in self._faults:
            if fault.method is not None and fault.method != str(request.method.value).upper():
                continue
            if fault.path is not None and not fault.path.search(request.url.path):
                continue
            fault.times -= 1
            if fault.times <= 0:
                self._faults.remove(fault)
            raise _Failure(fault.status, fault.reason, fault.message)

    def _serve(self, request: kmock.Request, resource: kmock.resource) -> tuple[Any, int]:
        api_version, kind, namespaced, has_status = self._infos[resource]
        namespace = request.namespace if namespaced else None
        action, name, sub = request.action, request.name, request.subresource
        if sub is not None and (sub != "status" or not has_status):
            raise _Failure(404, "NotFound", "the server could not find the requested resource")
        if action == kmock.action.LIST:
            return self._list(request, resource), 200
        if namespaced and namespace is None:
            raise _Failure(405, "MethodNotAllowed", f"{resource.plural} live in namespaces: give one in the URL")
        if action == kmock.action.CREATE:
            return self._create(request, resource, namespace)
        key = (resource, namespace, name)
        live = self._live(key)
        if action == kmock.action.FETCH:
            return self._existing(live, resource, name), 200
        if action == kmock.action.DELETE:
            self._existing(live, resource, name)
            self._delete(key)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}, 200
        if action == kmock.action.UPDATE:
            return self._patch(request, key, live, sub)
        raise _Failure(405, "MethodNotAllowed", f"{request.method.value} is not served by the stand-in")

    def _create(self, request: kmock.Request, resource: kmock.resource, namespace: Optional[str]) -> tuple[Any, int]:
        body = request.data
        if not isinstance(body, dict) or not (body.get("metadata") or {}).get("name"):
            raise _Failure(400, "BadRequest", "the body must be an object with metadata.name")
        key = (resource, namespace, body["metadata"]["name"])
        if self._live(key) is not None:
            raise _Failure(409, "AlreadyExists", f'{resource.plural} "{key[2]}" already exists')
        return self._store(key, copy.deepcopy(body), None, keep_status=False), 201

    def _patch(self, request: kmock.Request, key: tuple, live: Optional[dict], sub: Optional[str]) -> tuple[Any, int]:
        resource, _, name = key
        content_type = {k.lower(): v for k, v in request.headers.items()}.get("content-type", "").split(";")[0]
        body = json.loads(request.text) if request.text else None
        if content_type == "application/apply-patch+yaml" and sub is None:
            return self._apply(request, key, live, body)
        live = self._existing(live, resource, name)
        if content_type == "application/json-patch+json":
            try:
                changed = jsonpatch.apply_patch(copy.deepcopy(live), body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise _Failure(422, "Invalid", str(exc)) from None
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            _precondition(body, live, resource)
            changed = _merge_patch(copy.deepcopy(live), body)
        else:
            raise _Failure(415, "UnsupportedMediaType", f"the stand-in does not take {content_type!r} patches")
        if sub == "status":
            changed = {**live, "status": changed.get("status")}
        return self._store(key, changed, live, keep_status=sub is None), 200

    def _apply(self, request: kmock.Request, key: tuple, live: Optional[dict], body: Any) -> tuple[Any, int]:
        resource, _, name = key
        manager = request.params.get("fieldManager")
        if not manager:
            raise _Failure(400, "BadRequest", "fieldManager is required for apply patch")
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            raise _Failure(400, "BadRequest", "an applied object needs apiVersion and kind")
        if (body.get("metadata") or {}).get("name") != name:
            raise _Failure(400, "BadRequest", "the name of the object does not match the name in the URL")
        _precondition(body, live, resource)
        applied = copy.deepcopy(body)
        applied.pop("status", None)
        for server_field in _SERVER_METADATA:
            applied["metadata"].pop(server_field, None)
        previous = self._applied.get((key, manager), {})
        base = _without(copy.deepcopy(live), previous, applied) if live is not None else {}
        merged = _merge(base, applied)
        stored = self._store(key, merged, live, keep_status=True)
        self._applied[(key, manager)] = applied
        return stored, 201 if live is None else 200

    def _store(self, key: tuple, new: dict, live: Optional[dict], *, keep_status: bool) -> dict:
        """Write ``new`` at ``key`` unless it is what is there already; the object as stored."""
        resource, namespace, name = key
        api_version, kind, namespaced, _ = self._infos[resource]
        metadata = new.setdefault("metadata", {})
        self._check_name(kind, name, namespace_name=resource == _NAMESPACES)
        if namespaced:
            metadata["namespace"] = namespace
            if self._live((_NAMESPACES, None, namespace)) is None:
                raise _Failure(404, "NotFound", f'namespaces "{namespace}" not found')
        new["apiVersion"], new["kind"], metadata["name"] = api_version, kind, name
        if live is not None:
            for server_field in _SERVER_METADATA:
                if server_field in live.get("metadata", {}):
                    metadata[server_field] = live["metadata"][server_field]
            if keep_status and "status" in live:
                new["status"] = live["status"]
            if new == live:
                return live  # nothing changes: nothing is written
            spec_changed = _without_meta(new) != _without_meta(live)
            metadata["generation"] = live["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        else:
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            metadata.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now)
            if resource == _NAMESPACES:
                new.setdefault("status", {"phase": "Active"})
        self._version += 1
        metadata["resourceVersion"] = str(self._version)
        if key in self.objects:
            self.objects[key].create(new)  # a new version in its history
        else:
            self.objects[key] = new
        return copy.deepcopy(new)

    def _delete(self, key: tuple) -> None:
        self.objects[key].delete()
        if key[0] == _NAMESPACES:  # what lives in it goes with it
            for other, obj in list(self.objects.items()):
                if other[1] == key[2] and not obj.deleted:
                    obj.delete()

    def _list(self, request: kmock.Request, resource: kmock.resource) -> dict[str, Any]:
        api_version, kind, namespaced, _ = self._infos[resource]
        labels = _label_selector(request.params.get("labelSelector", ""))
        fields = _field_selector(request.params.get("fieldSelector", ""))
        items = []
        for (res, ns, _), obj in self.objects.items():
            if res != resource or obj.deleted or (request.namespace is not None and ns != request.namespace):
                continue
            raw = copy.deepcopy(obj.raw)
            if labels(raw) and fields(raw):
                raw.pop("apiVersion", None), raw.pop("kind", None)  # list items carry neither
                items.append(raw)
        metadata = {"resourceVersion": str(self._version)}
        return {"apiVersion": api_version, "kind": f"{kind}List", "metadata": metadata, "items": items}

    def _live(self, key: tuple) -> Optional[dict]:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    @staticmethod
    def _existing(live: Optional[dict], resource: kmock.resource, name: str) -> dict:
        if live is None:
            raise _Failure(404, "NotFound", f'{resource.plural} "{name}" not found')
        return live

    @staticmethod
    def _check_name(kind: str, name: str, *, namespace_name: bool) -> None:
        pattern, limit = (_LABEL, 63) if namespace_name else (_SUBDOMAIN, 253)
        if not pattern.match(name or "") or len(name) > limit:
            message = (
                f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": a lowercase RFC 1123 name '
                "must consist of lower case alphanumeric characters, '-' or '.'"
            )
            raise _Failure(422, "Invalid", message)


async def _parse_request(raw: aiohttp.web.BaseRequest, *, id: int) -> kmock.Request:
    """kmock's Request for ``raw``: its HTTP parts, and what it asks of Kubernetes."""
    body = await raw.read()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    group, version, namespace, plural, name, sub = _parse_path(raw.path)
    resource = None if group is None else kmock.resource(group=group, version=version, plural=plural)
    method, query = raw.method.upper(), dict(raw.query)
    action = None
    if group is not None:
        if method == "GET" and query.get("watch") == "true":
            action = kmock.action.WATCH
        elif name is None:
            action = {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method)
        else:
            action = {"GET": kmock.action.FETCH, "PATCH": kmock.action.UPDATE, "DELETE": kmock.action.DELETE}.get(
                method
            )
    return kmock.Request(
        id=id,
        raw_request=raw,
        url=raw.url,
        method=raw.method,
        params=query,
        headers=dict(raw.headers),
        cookies=dict(raw.cookies),
        body=body,
        text=body.decode(errors="replace"),
        data=data,
        action=action,
        resource=resource,
        namespace=namespace,
        name=name,
        subresource=sub,
    )


def _parse_path(path: str) -> tuple[Optional[str], ...]:
    """(group, version, namespace, plural, name, subresource) of a Kubernetes API path; group None for others."""
    parts = [part for part in path.strip("/").split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 2 and parts[0] == "apis":
        group, version, rest = parts[1], (parts[2] if len(parts) > 2 else None), parts[3:]
    else:
        return None, None, None, None, None, None
    namespace = None
    namespace_subresource = len(rest) == 3 and rest[0] == "namespaces" and rest[2] in ("status", "finalize")
    if len(rest) >= 3 and rest[0] == "namespaces" and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    return group, version, namespace, plural, name, "/".join(rest[2:]) or None


def _status_response(code: int, reason: str, message: str) -> aiohttp.web.Response:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
    return aiohttp.web.json_response({**status, "message": message, "reason": reason, "code": code}, status=code)


def _precondition(body: Any, live: Optional[dict], resource: kmock.resource) -> None:
    """A patch that carries ``metadata.resourceVersion`` applies to that version only: 409 Conflict otherwise."""
    wanted = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
    if wanted is None:
        return
    if live is None or str(wanted) != (live.get("metadata") or {}).get("resourceVersion"):
        name = (body.get("metadata") or {}).get("name")
        message = (
            f'Operation cannot be fulfilled on {resource.plural} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )
        raise _Failure(409, "Conflict", message)


def _merge(base: Any, applied: Any) -> Any:
    """``applied`` over ``base``: mappings merge, anything else (lists too) is replaced."""
    if not isinstance(base, dict) or not isinstance(applied, dict):
        return copy.deepcopy(applied)
    merged = dict(base)
    for key, value in applied.items():
        merged[key] = _merge(base.get(key), value)
    return merged


def _without(live: dict, previous: dict, applied: dict) -> dict:
    """``live`` without the fields a manager applied before (``previous``) and no longer applies."""
    for key, value in previous.items():
        if key not in applied:
            live.pop(key, None)
        elif isinstance(value, dict) and isinstance(applied[key], dict) and isinstance(live.get(key), dict):
            live[key] = _without(live[key], value, applied[key])
    return live


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    target = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


def _without_meta(obj: dict) -> dict:
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def _label_selector(text: str) -> Callable[[dict], bool]:
    """A predicate for a label selector (every requirement must hold)."""
    requirements = [part.strip() for part in re.split(r",(?![^()]*\))", text) if part.strip()]
    checks = []
    for requirement in requirements:
        if match := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", requirement):
            key, operator, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
            checks.append(lambda labels, k=key, o=operator, v=values: (labels.get(k) in v) == (o == "in"))
        elif match := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", requirement):
            key, operator, value = match[1], match[2], match[3]
            checks.append(lambda labels, k=key, o=operator, v=value: (labels.get(k) == v) == (o != "!="))
        elif match := re.fullmatch(r"(!?)([\w./-]+)", requirement):
            checks.append(lambda labels, neg=bool(match[1]), k=match[2]: (k in labels) != neg)
        else:
            raise _Failure(400, "BadRequest", f"unable to parse requirement: {requirement!r}")
    return lambda obj: all(check((obj.get("metadata") or {}).get("labels") or {}) for check in checks)


def _field_selector(text: str) -> Callable[[dict], bool]:
    """A predicate for a field selector: ``path=value`` / ``path!=value`` over dotted paths."""
    checks = []
    for requirement in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", requirement)
        if not match:
            raise _Failure(400, "BadRequest", f"invalid field selector: {requirement!r}")
        checks.append((match[1].split("."), match[2] != "!=", match[3]))

    def value_at(obj: Any, path: list[str]) -> str:
        for part in path:
            obj = obj.get(part) if isinstance(obj, dict) else None
        return "" if obj is None else str(obj)

    return lambda obj: all((value_at(obj, path) == value) == equal for path, equal, value in checks)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM certificates for a stand-in served over TLS: a CA, the server's (for 127.0.0.1), a client's."""

    ca: str
    server_certificate: str
    server_key: str
    client_certificate: str
    client_key: str

    @classmethod
    def generate(cls) -> "TlsMaterial":
        ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        ca = _certificate("stand-in CA", ca_key.public_key(), ca_key, None, ca=True)
        server = _certificate("127.0.0.1", server_key.public_key(), ca_key, ca, san=True)
        client = _certificate("threeport", client_key.public_key(), ca_key, ca)
        return cls(_pem(ca), _pem(server), _key_pem(server_key), _pem(client), _key_pem(client_key))

    def server_context(self, directory: str) -> ssl.SSLContext:
        """What the server presents, and the client certificates it demands (signed by the CA)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        certificate, key = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
        for path, text in ((certificate, self.server_certificate), (key, self.server_key)):
            with open(path, "w") as file:
                file.write(text)
        context.load_cert_chain(certificate, key)
        context.load_verify_locations(cadata=self.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def _certificate(name, public_key, signing_key, issuer, *, ca=False, san=False) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _tls_server_class(context: ssl.SSLContext) -> type:
    class TlsServer(aiohttp.test_utils.RawTestServer):
        def __init__(self, handler, **options) -> None:
            super().__init__(handler, scheme="https", **options)

        async def start_server(self, **options) -> None:
            await super().start_server(ssl=context, **options)

    return TlsServer


class KubeApi:
    """The stand-in on a free loopback port, served by a thread of its own; every method is safe from tests.

    With ``tls`` it speaks HTTPS with the server certificate and demands a client certificate.
    """

    def __init__(self, *, tls: Optional[ssl.SSLContext] = None) -> None:
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube stand-in", daemon=True)
        self.handler: Optional[KubeStandIn] = None
        self._server: Optional[kmock.Server] = None
        self.url = ""

    def start(self) -> "KubeApi":
        self._thread.start()

        async def enter() -> None:
            self.handler = KubeStandIn()
            await self.handler.__aenter__()
            options = {"server_cls": _tls_server_class(self._tls)} if self._tls else {}
            self._server = kmock.Server(self.handler, host="127.0.0.1", **options)
            await self._server.__aenter__()

        asyncio.run_coroutine_threadsafe(enter(), self._loop).result(30)
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{self._server.port}"
        self.call(lambda: self.handler.reset())
        return self

    def stop(self) -> None:
        async def leave() -> None:
            await self._server.__aexit__(None, None, None)
            await self.handler.__aexit__(None, None, None)

        try:
            asyncio.run_coroutine_threadsafe(leave(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run in the server's loop, between two requests."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    # Hooks for the tests ------------------------------------------------------------------

    def reset(self, *, nodes: int = 2) -> None:
        self.call(lambda: self.handler.reset(nodes=nodes))

    def require_token(self, token: Optional[str]) -> None:
        """Answer 401 to requests without ``Authorization: Bearer <token>`` (None: accept any)."""

        def set_token() -> None:
            self.handler.token = token

        self.call(set_token)

    def fail(
        self, status: int, *, times: int = 1, method: Optional[str] = None, path: Optional[str] = None, message=""
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and ``path`` (a regex searched in the URL path)."""
        message = message or f"injected by the test ({status})"
        self.call(lambda: self.handler.fail(status, method=method, path=path, times=times, message=message))

    def pending_faults(self) -> int:
        return self.call(lambda: self.handler.pending_faults())

    def clear_faults(self) -> None:
        self.call(lambda: self.handler._faults.clear())

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.call(lambda: self.handler.put(obj))

    def set_status(self, api_version: str, kind: str, namespace: Optional[str], name: str, status: dict) -> None:
        self.call(lambda: self.handler.set_status(api_version, kind, namespace, name, status))

    def live(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> Optional[dict]:
        return self.call(lambda: self.handler.live_object(api_version, kind, namespace, name))

    def names(self, api_version: str, kind: str, namespace: Optional[str] = None) -> list[str]:
        """The live objects' names (``namespace/name`` across namespaces when ``namespace`` is None)."""
        return self.call(lambda: self.handler.live_names(api_version, kind, namespace))

    def versions(self, api_version: str, kind: str, namespace: Optional[str], name: str) -> int:
        return self.call(lambda: self.handler.version_count(api_version, kind, namespace, name))

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request since the last reset."""
        return self.call(lambda: self.handler.requests_since_reset())


@pytest.fixture(scope="session")
def kube_api() -> Iterator[KubeApi]:
    api = KubeApi().start()
    yield api
    api.stop()


@pytest.fixture
def kube(kube_api) -> KubeApi:
    """The stand-in, emptied for this test."""
    kube_api.reset()
    return kube_api


@pytest.fixture(scope="module")
def kube_tls(tmp_path_factory) -> Iterator[tuple[KubeApi, TlsMaterial]]:
    """A second stand-in, over TLS with client certificates, and its certificates."""
    material = TlsMaterial.generate()
    api = KubeApi(tls=material.server_context(str(tmp_path_factory.mktemp("tls")))).start()
    yield api, material
    api.stop()


def runtime_for(
    url: str,
    *,
    name: str = "stand-in",
    default: bool = False,
    token: Optional[str] = None,
    kubeconfig: Optional[str] = None,
    reconciled: bool = True,
    publish: Optional[Callable] = None,
    **fields: Any,
) -> KubernetesRuntimeInstance:
    """A KubernetesRuntimeInstance reaching ``url`` (its definition made and reconciled), with more ``fields``.

    ``reconciled`` marks it reconciled at once (its reconciler is not under
    test); otherwise ``publish`` (e.g. ``lambda rows: publish_rows(broker, rows)``)
    is given its outbox rows.
    """
    definition = store.create(KubernetesRuntimeDefinition, {"name": f"{name}-def", "infra_provider": "kubernetes"})
    _mark_reconciled(KubernetesRuntimeDefinition, definition.obj)
    fields |= {"name": name, "kubernetes_runtime_definition_id": definition.obj.id}
    fields |= {"kubeconfig": kubeconfig} if kubeconfig else {"api_endpoint": url}
    if token:
        fields["connection_token"] = token
    if default:
        fields["default_runtime"] = True
    written = store.create(KubernetesRuntimeInstance, fields)
    if reconciled:
        _mark_reconciled(KubernetesRuntimeInstance, written.obj)
    elif publish is not None:
        publish(written.outbox)
    return store.get(KubernetesRuntimeInstance, written.obj.id)


def _mark_reconciled(model, obj) -> None:
    store.write_status(model, obj.id, generation=obj.generation, status={"phase": "Reconciled"}, reconciled=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="run the opt-in tests against the cluster of this kubeconfig (KUBECONFIG is used when not given)",
    )


@pytest.fixture
def real_kubeconfig(request) -> str:
    """The text of the kubeconfig given with ``--kubeconfig`` or ``KUBECONFIG``; skips the test without one."""
    path = request.config.getoption("--kubeconfig", default=None) or os.environ.get("KUBECONFIG")
    if not path:
        pytest.skip("no real cluster: give --kubeconfig PATH or set KUBECONFIG to run the opt-in cluster tests")
    path = path.split(os.pathsep)[0]
    with open(os.path.expanduser(path)) as file:
        return file.read()
