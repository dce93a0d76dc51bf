"""The Kubernetes adapter: the only door to a cluster, and the only module that imports ``kubernetes``.

Reconcilers act on a cluster through a :class:`Cluster` built from
:class:`Credentials`: a whole kubeconfig (loaded into the cluster's own
client configuration, never the process-wide one), or an API endpoint with
its CA and a bearer token or a client certificate. A ``token_source`` (a
callable returning a fresh token, asked before every request) is how
short-lived tokens such as EKS's IAM tokens plug in. Every call:

- finds the kind's resource by discovery (its URL plural and whether it is
  namespaced), cached per group version and refreshed once for a kind not
  seen yet;
- writes with server-side apply (``PATCH`` as ``application/apply-patch+yaml``,
  field manager :data:`FIELD_MANAGER`, ``force``), so applying the same
  object twice changes nothing;
- retries conflicts (409), throttling (429), server errors (5xx) and
  dropped or refused connections with tenacity: bounded attempts,
  exponential backoff with full jitter (urllib3's own retries are off, so
  one policy decides);
- translates every failure into this module's errors:
  :class:`KubernetesNotFound` (tolerated when tearing down),
  :class:`KubernetesPermanentError` (credentials rejected, an invalid
  object, a kind the cluster does not serve: the object shows why, no
  retry), :class:`KubernetesUnavailable` (unreachable or still failing after
  the retries: the object is requeued with backoff), :class:`KubernetesError`
  for the rest;
- is, while tracing is on, a client span (``apply Deployment``, ``list Node``)
  naming the verb, kind, namespace and the HTTP status of the last attempt.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import tenacity
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from workers import tracing

from .errors import PermanentError, ReconcileError, TemporaryError

__all__ = [
    # Clusters
    "Cluster",
    "Credentials",
    "RetryPolicy",
    "TokenSource",
    "FIELD_MANAGER",
    # Errors
    "KubernetesError",
    "KubernetesNotFound",
    "KubernetesConflict",
    "KubernetesPermanentError",
    "KubernetesUnknownKind",
    "KubernetesUnavailable",
    # Object helpers
    "identity",
    "split_api_version",
]

#: The field manager of every server-side apply.
FIELD_MANAGER = "threeport"
_APPLY_PATCH = "application/apply-patch+yaml"
_JSON = "application/json"
#: Objects per page when listing.
_PAGE = 500

#: Asked before every request for the bearer token to send (e.g. a fresh EKS token).
TokenSource = Callable[[], str]


# Errors ---------------------------------------------------------------------------


class KubernetesError(ReconcileError):
    """Raised when a call to a cluster fails: ``status`` is the HTTP status (0: no answer), ``reason`` the API's."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubernetesNotFound(KubernetesError):
    """Raised when the object asked for does not exist (a reconciler tolerates it when tearing down)."""


class KubernetesConflict(KubernetesError):
    """Raised when a create finds the object exists already (409 AlreadyExists, not retried)."""


class KubernetesPermanentError(KubernetesError, PermanentError):
    """Raised when retrying cannot help: credentials rejected (401/403), an invalid object (400/422), a missing kind."""


class KubernetesUnknownKind(KubernetesPermanentError):
    """Raised when the cluster serves no such kind (or API version): no object of it can exist there."""


class KubernetesUnavailable(KubernetesError, TemporaryError):
    """Raised when the cluster cannot be reached or still fails (409, 429, 5xx) after the retries: try again later.

    ``delay=None`` lets the reconcile actor back off.
    """

    def __init__(self, message: str, *, status: int = 0, reason: str = "", delay: Optional[float] = None) -> None:
        KubernetesError.__init__(self, message, status=status, reason=reason)
        self.delay = delay


# Settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: attempts, the backoff's first step and cap (s), and request timeouts (s)."""

    attempts: int = 5
    initial: float = 0.2
    ceiling: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


@dataclass(frozen=True)
class Credentials:
    """How to reach one cluster: a whole kubeconfig, or an endpoint with its CA and a token or a client certificate."""

    #: The API server's URL (ignored with ``kubeconfig``).
    endpoint: Optional[str] = None
    #: PEM CA certificate of the API server; the system's CAs when not given.
    ca_certificate: Optional[str] = None
    #: A bearer token.
    token: Optional[str] = None
    #: PEM client certificate, with its PEM key.
    client_certificate: Optional[str] = None
    client_key: Optional[str] = None
    #: A whole kubeconfig (YAML), instead of the fields above; its current context unless ``context``.
    kubeconfig: Optional[str] = None
    context: Optional[str] = None
    #: Asked for a fresh token before every request (wins over ``token``).
    token_source: Optional[TokenSource] = field(default=None, compare=False)

    def fingerprint(self) -> str:
        """A digest of the credentials (whether there is a token source, not which one): the cache key of clients."""
        fields = (self.endpoint, self.ca_certificate, self.token, self.client_certificate, self.client_key)
        fields += (self.kubeconfig, self.context, self.token_source is not None)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()

    def __repr__(self) -> str:  # never show a secret
        how = "kubeconfig" if self.kubeconfig else "token" if self.token or self.token_source else "certificate"
        return f"Credentials(endpoint={self.endpoint!r}, auth={how!r})"


@dataclass(frozen=True)
class _Resource:
    """What discovery says about a kind: where it is served and whether it lives in namespaces."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    def path(self, *, namespace: Optional[str] = None, name: Optional[str] = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        return base + (f"/{quote(name, safe='')}" if name else "")


# Object helpers ---------------------------------------------------------------------


def split_api_version(api_version: str) -> tuple[str, str]:
    """``"apps/v1"`` → ``("apps", "v1")``; ``"v1"`` → ``("", "v1")``."""
    group, _, version = api_version.rpartition("/")
    return group, version


def identity(obj: dict[str, Any]) -> str:
    """An object's name in threeport: ``[namespace/]Kind/name``."""
    metadata = obj.get("metadata") or {}
    name = f"{obj.get('kind')}/{metadata.get('name')}"
    return f"{metadata['namespace']}/{name}" if metadata.get("namespace") else name


# The cluster ------------------------------------------------------------------------


class Cluster:
    """One cluster reached with one set of credentials: discovery, apply, get, list, delete; thread-safe."""

    def __init__(self, credentials: Credentials, *, retry: RetryPolicy = RetryPolicy()) -> None:
        self.credentials = credentials
        self.retry = retry
        self._files = _PrivateFiles()
        self._lock = threading.Lock()
        self._discovered: dict[str, dict[str, _Resource]] = {}
        configuration = self._configuration(credentials)
        self.endpoint = configuration.host
        self._api = kubernetes.client.ApiClient(configuration)
        self._finalizer = weakref.finalize(self, _close, self._api, self._files)

    def close(self) -> None:
        """Release the connections and remove the key and certificate files written for the client."""
        self._finalizer()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({self.endpoint!r})"

    # What the cluster is ----------------------------------------------------------------

    def server_version(self) -> dict[str, Any]:
        """The API server's ``/version``: ``gitVersion``, ``major``, ``minor``, ``platform``…"""
        return self._request("GET", "/version", what="read the server version", verb="get", kind="version")

    def node_count(self) -> int:
        """How many nodes the cluster has."""
        return sum(1 for _ in self.iterate("v1", "Node"))

    def is_namespaced(self, api_version: str, kind: str) -> bool:
        """Whether objects of ``kind`` live in namespaces; KubernetesPermanentError for a kind the cluster lacks."""
        return self._resource(api_version, kind).namespaced

    # Reads ------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, name: str, namespace: Optional[str] = None) -> dict[str, Any]:
        """The live object; KubernetesNotFound when it does not exist."""
        resource = self._resource(api_version, kind)
        path = resource.path(namespace=namespace or "default", name=name)
        what = f"get {kind} {_where(namespace, name, resource)}"
        return self._request("GET", path, what=what, resource=resource, namespace=namespace or "default")

    def find(self, api_version: str, kind: str, name: str, namespace: Optional[str] = None) -> Optional[dict[str, Any]]:
        """The live object, or None when it does not exist."""
        try:
            return self.get(api_version, kind, name, namespace)
        except KubernetesNotFound:
            return None

    def list(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: Optional[str] = None,
        label_selector: Optional[str] = None,
        field_selector: Optional[str] = None,
    ) -> list[dict[str, Any]]:
        """Every object of ``kind`` (in ``namespace``, or everywhere) matching the selectors (kind, apiVersion set)."""
        return list(
            self.iterate(
                api_version, kind, namespace=namespace, label_selector=label_selector, field_selector=field_selector
            )
        )

    def iterate(
        self,
        api_version: str,
        kind: str,
        *,
        namespace: Optional[str] = None,
        label_selector: Optional[str] = None,
        field_selector: Optional[str] = None,
    ) -> Iterator[dict[str, Any]]:
        """Like :meth:`list`, a page at a time."""
        resource = self._resource(api_version, kind)
        path = resource.path(namespace=namespace)
        query = {"limit": str(_PAGE)}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        what = f"list {kind} in {namespace or 'all namespaces'}"
        span = dict(verb="list", resource=resource, namespace=namespace)
        while True:
            page = self._request("GET", path, query=query, what=what, **span)
            for item in page.get("items") or []:
                yield {"apiVersion": api_version, "kind": kind, **item}
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            query["continue"] = token

    def events(self, namespace: str) -> list[dict[str, Any]]:
        """The core ``v1`` Events of a namespace."""
        return self.list("v1", "Event", namespace=namespace)

    # Writes -----------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (its namespace defaults to ``default``); the live object.

        Applying the object the cluster has already changes nothing there.
        """
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        name = (obj.get("metadata") or {}).get("name")
        if not api_version or not kind or not name:
            raise KubernetesPermanentError(f"cannot apply an object without apiVersion, kind and metadata.name: {obj}")
        resource = self._resource(api_version, kind)
        body = copy.deepcopy(obj)
        metadata = body["metadata"]
        if resource.namespaced:
            metadata["namespace"] = metadata.get("namespace") or "default"
        else:
            metadata.pop("namespace", None)
        path = resource.path(namespace=metadata.get("namespace"), name=name)
        query = {"fieldManager": FIELD_MANAGER, "force": "true"}
        what = f"apply {kind} {_where(metadata.get('namespace'), name, resource)}"
        span = dict(verb="apply", resource=resource, namespace=metadata.get("namespace"))
        return self._request("PATCH", path, query=query, body=body, content_type=_APPLY_PATCH, what=what, **span)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj``; KubernetesConflict when it exists already (not retried)."""
        resource = self._resource(obj["apiVersion"], obj["kind"])
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        what = f"create {obj['kind']} {_where(namespace, metadata.get('name'), resource)}"
        path = resource.path(namespace=namespace)
        span = dict(resource=resource, namespace=namespace)
        return self._request("POST", path, body=obj, what=what, retry_conflicts=False, **span)

    def delete(self, api_version: str, kind: str, name: str, namespace: Optional[str] = None) -> bool:
        """Ask for the object's deletion (its dependents go in the background): whether it was there."""
        resource = self._resource(api_version, kind)
        path = resource.path(namespace=namespace or "default", name=name)
        try:
            self._request(
                "DELETE",
                path,
                query={"propagationPolicy": "Background"},
                what=f"delete {kind} {_where(namespace, name, resource)}",
                resource=resource,
                namespace=namespace or "default",
            )
        except KubernetesNotFound:
            return False
        return True

    def ensure_namespace(self, name: str, *, labels: Optional[dict[str, str]] = None) -> bool:
        """Make the namespace exist: whether it was made now (False when it was there already).

        KubernetesUnavailable while a namespace of that name is still being deleted.
        """
        live = self.find("v1", "Namespace", name)
        if live is None:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
            try:
                self.create(body)
                return True
            except KubernetesConflict:  # made meanwhile by someone else
                live = self.get("v1", "Namespace", name)
        if (live.get("status") or {}).get("phase") == "Terminating":
            raise KubernetesUnavailable(f"namespace {name!r} is still being deleted", delay=5.0)
        return False

    # Discovery --------------------------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> _Resource:
        with self._lock:
            known = self._discovered.get(api_version)
        if known is None or kind not in known:  # not seen yet, or a kind added since (a CRD)
            known = self._discover(api_version)
            with self._lock:
                self._discovered[api_version] = known
        if kind not in known:
            raise KubernetesUnknownKind(f"the cluster at {self.endpoint} serves no kind {kind} in {api_version}")
        return known[kind]

    def _discover(self, api_version: str) -> dict[str, _Resource]:
        group, version = split_api_version(api_version)
        path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        try:
            listing = self._request("GET", path, what=f"discover {api_version}", verb="discover", kind=api_version)
        except KubernetesNotFound:
            raise KubernetesUnknownKind(
                f"the cluster at {self.endpoint} serves no API {api_version}", status=404
            ) from None
        found = {}
        for entry in listing.get("resources") or []:
            if "/" in entry.get("name", "") or not entry.get("kind"):
                continue  # a subresource such as deployments/status
            found[entry["kind"]] = _Resource(
                group, version, entry["name"], entry["kind"], bool(entry.get("namespaced"))
            )
        return found

    # Requests, retries and errors ------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        query: Optional[dict[str, str]] = None,
        body: Any = None,
        content_type: str = _JSON,
        retry_conflicts: bool = True,
        verb: Optional[str] = None,
        kind: str = "",
        resource: Optional[_Resource] = None,
        namespace: Optional[str] = None,
    ) -> Any:
        """One call, retried and translated; ``verb`` (the method's by default), ``kind`` (or ``resource``'s) and
        ``namespace`` (none for a kind that lives outside namespaces) name its span."""
        if resource is not None:
            kind = resource.kind
            namespace = namespace if resource.namespaced else None

        def call() -> Any:
            data, status, _ = self._api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": _JSON, "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                response_types_map={200: "object", 201: "object", 202: "object"},
                _return_http_data_only=False,
                _preload_content=True,
                _request_timeout=(self.retry.connect_timeout, self.retry.read_timeout),
            )
            span.set_attribute("http.response.status_code", status)  # the span below is open while this runs
            return data

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: _is_transient(exc, retry_conflicts=retry_conflicts)),
            stop=tenacity.stop_after_attempt(self.retry.attempts),
            wait=tenacity.wait_random_exponential(multiplier=self.retry.initial, max=self.retry.ceiling),
            reraise=True,
        )
        with _request_span(verb or _VERBS.get(method, method.lower()), kind, namespace, self.endpoint) as span:
            try:
                return retrying(call)
            except Exception as exc:
                translated = _translate(_unwrapped(exc), f"{what} at {self.endpoint}", retried=self.retry.attempts)
                if translated is None:
                    raise
                if translated.status:
                    span.set_attribute("http.response.status_code", translated.status)
                raise translated from exc

    # Client configuration ---------------------------------------------------------------

    def _configuration(self, credentials: Credentials) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration()
        if credentials.kubeconfig:
            try:
                document = yaml.safe_load(credentials.kubeconfig)
                kubernetes.config.load_kube_config_from_dict(
                    document,
                    context=credentials.context,
                    client_configuration=configuration,
                    persist_config=False,
                    temp_file_path=self._files.directory,
                )
            except (ConfigException, yaml.YAMLError, TypeError, ValueError, KeyError) as exc:
                raise KubernetesPermanentError(f"invalid kubeconfig: {exc}") from exc
        else:
            if not credentials.endpoint:
                raise KubernetesPermanentError("no API endpoint to reach the cluster at (give one, or a kubeconfig)")
            configuration.host = credentials.endpoint.rstrip("/")
            if credentials.ca_certificate:
                configuration.ssl_ca_cert = self._files.write("ca.crt", credentials.ca_certificate)
            if credentials.client_certificate:
                configuration.cert_file = self._files.write("client.crt", credentials.client_certificate)
                configuration.key_file = self._files.write("client.key", credentials.client_key or "")
            if credentials.token:
                _set_token(configuration, credentials.token)
        if credentials.token_source is not None:
            source = credentials.token_source
            _set_token(configuration, "")
            configuration.refresh_api_key_hook = lambda config: _set_token(config, source())
        configuration.retries = False  # tenacity retries, with one policy for all
        configuration.proxy = None  # the environment's proxy is not the cluster's
        return configuration


def _set_token(configuration: kubernetes.client.Configuration, token: str) -> None:
    """Send ``Authorization: Bearer <token>`` (the client looks under ``BearerToken`` from v36, before that
    under ``authorization``)."""
    value = f"Bearer {token}" if token else ""
    configuration.api_key = {"BearerToken": value, "authorization": value}
    configuration.api_key_prefix = {}


#: The verb of a request's span when the caller names none.
_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _request_span(verb: str, kind: str, namespace: Optional[str], endpoint: str):
    """The client span of one request (a no-op while tracing is off)."""
    attributes = {"k8s.verb": verb, "k8s.kind": kind, "k8s.namespace.name": namespace, "server.address": endpoint}
    return tracing.span(f"{verb} {kind}".strip(), kind="client", attributes=attributes)


def _where(namespace: Optional[str], name: Optional[str], resource: _Resource) -> str:
    return f"{namespace or 'default'}/{name}" if resource.namespaced else str(name)


def _close(api: kubernetes.client.ApiClient, files: "_PrivateFiles") -> None:
    try:
        api.close()
    finally:
        files.remove()


class _PrivateFiles:
    """A directory only this process's user can read, for the key and certificates the client reads from files."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="threeport-kube-")

    def write(self, name: str, content: str) -> str:
        path = os.path.join(self.directory, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(content)
        return path

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


#: urllib3's errors for an answer that never came: refused, dropped, timed out, name not resolved.
_CONNECTION_ERRORS = (urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError, ConnectionError)


def _unwrapped(exc: BaseException) -> BaseException:
    """The client's own error: for a TLS failure it raises ``ApiException(status=0)`` with no body, then fails
    decoding that body (AttributeError) while handling it."""
    if isinstance(exc, AttributeError) and isinstance(exc.__context__, ApiException):
        return exc.__context__
    return exc


def _is_transient(exc: BaseException, *, retry_conflicts: bool = True) -> bool:
    """Whether trying again shortly may succeed: a dropped connection, a conflict, throttling, a 5xx."""
    exc = _unwrapped(exc)
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, ApiException):
        if exc.status == 0:
            return not _certificate_problem(exc)
        return exc.status == 429 or exc.status >= 500 or (exc.status == 409 and retry_conflicts)
    return False


def _certificate_problem(exc: ApiException) -> bool:
    """Whether TLS failed on a certificate (wrong CA, wrong name, expired): retrying cannot help."""
    reason = str(exc.reason).upper()
    return "CERTIFICATE" in reason or "HOSTNAME" in reason


def _answer(exc: ApiException) -> tuple[str, str]:
    """The (reason, message) of a Kubernetes ``Status`` answer."""
    try:
        status = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        status = {}
    if not isinstance(status, dict):
        status = {}
    return str(status.get("reason") or exc.reason or ""), str(status.get("message") or exc.body or exc.reason or "")


def _translate(exc: BaseException, what: str, *, retried: int) -> Optional[KubernetesError]:
    """This module's error for one of the client's (None for anything else)."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return KubernetesUnavailable(f"{what}: cannot reach the cluster: {exc}")
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return KubernetesPermanentError(f"{what}: {exc}")
    if not isinstance(exc, ApiException):
        return None
    status = exc.status or 0
    if status == 0:
        reason = " ".join(str(exc.reason).split())
        if _certificate_problem(exc):
            return KubernetesPermanentError(f"{what}: TLS failed (is the CA certificate right?): {reason}")
        return KubernetesUnavailable(f"{what}: cannot reach the cluster: {reason}")
    reason, message = _answer(exc)
    text = f"{what}: {status} {reason}: {message}"
    if status == 404:
        return KubernetesNotFound(text, status=status, reason=reason)
    if status == 401:
        return KubernetesPermanentError(f"{text} (the cluster rejects the credentials)", status=status, reason=reason)
    if status == 403:
        return KubernetesPermanentError(f"{text} (the credentials may not do this)", status=status, reason=reason)
    if status in (400, 422):
        return KubernetesPermanentError(f"{text} (invalid object)", status=status, reason=reason)
    if status == 409 and reason == "AlreadyExists":
        return KubernetesConflict(text, status=status, reason=reason)
    if status in (409, 429) or status >= 500:
        return KubernetesUnavailable(f"{text} (still failing after {retried} attempts)", status=status, reason=reason)
    return KubernetesError(text, status=status, reason=reason)
