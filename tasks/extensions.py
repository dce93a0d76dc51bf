"""Writing an extension's controller: declare its kinds, write their reconcilers, run them as a worker.

An extension lives in its own repository and its controller runs on its
own (``threeport worker --extension MODULE``): it talks to the control
plane through the HTTP API only (:class:`~tasks.api_client.ApiClient`), and
to NATS for its queue and locks, with the same reconcile actor as the core
kinds: the per-object lock, the generation check, requeues without
spending retries, retries with backoff, dead letters and metrics::

    from tasks.extensions import Extension, PermanentError, TemporaryError

    acme = Extension("acmecorp.com", "v1", description="Workloads, but fancy.")

    @acme.kind("FancyWorkload", schema={"type": "object", "properties": {...}})
    class FancyWorkloads:
        def reconcile(self, obj, api):  # make the world match obj (idempotent)
            ...
            return {"workload_instance_id": ...}  # merged into obj's status

        def delete(self, obj, api):  # tear down what reconcile made
            ...

``obj`` is the object as the API shows it (``obj["image"]`` or
``obj.image``); raise :class:`TemporaryError` to be called again later
(``delay`` seconds, or a growing backoff) and :class:`PermanentError` to
fail the object for good; any other exception is retried with backoff and
dead-lettered in the end. The outcome (phase, message, what ``reconcile``
returned) is written to the object's status with an event, guarded by the
generation that was read. On start the worker registers the extension with
the API (:meth:`Extension.register`: created, kept or changed compatibly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol

import dramatiq

from models.errors import NotFound
from models.extension_kinds import EXTENSION_ACTOR, default_plural
from workers.broker import JetStreamBroker
from workers.locks import LockManager

from .actor import LOCK_TTL, ReconcileActor, Report, declare
from .api_client import ApiClient, ApiError
from .errors import PermanentError, TemporaryError
from .reconcilers import Reconciler

__all__ = [
    "Extension",
    "ExtensionKind",
    "ObjectView",
    "ExtensionReconciler",
    "ExtensionReconcileActor",
    "declare_extension_actor",
    "load_extensions",
    "TemporaryError",
    "PermanentError",
    "EXTENSION_ACTOR",
]

logger = logging.getLogger(__name__)


class ExtensionReconciler(Protocol):
    """What an extension kind's reconciler provides."""

    def reconcile(self, obj: ObjectView, api: ApiClient) -> Optional[dict[str, Any]]: ...

    def delete(self, obj: ObjectView, api: ApiClient) -> None: ...


class ObjectView(dict):
    """An object as the API shows it, its fields also readable as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class ExtensionKind:
    """One kind of an extension, and its reconciler."""

    extension: Extension
    name: str
    schema: dict[str, Any]
    plural: str
    summary: str = ""
    reconciled: bool = True
    reconciler: Optional[ExtensionReconciler] = None

    @property
    def kind(self) -> str:
        """The qualified name messages, locks and events carry: ``acmecorp.com/v1/FancyWorkload``."""
        return f"{self.extension.domain}/{self.extension.version}/{self.name}"

    @property
    def path(self) -> str:
        return f"/{self.extension.domain}/{self.extension.version}/{self.plural}"

    @property
    def queue(self) -> str:
        return self.extension.queue

    actor = EXTENSION_ACTOR

    def registration(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "plural": self.plural,
            "summary": self.summary,
            "reconciled": self.reconciled,
            "schema": self.schema,
        }


@dataclass
class Extension:
    """One version of an extension's API: its domain, version, queue and kinds."""

    domain: str
    version: str
    description: str = ""
    #: The queue its controller consumes; ``ext.<domain>`` unless named (it must be under that).
    queue_name: Optional[str] = None
    kinds: dict[str, ExtensionKind] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return self.queue_name or f"ext.{self.domain}"

    def kind(
        self,
        name: str,
        *,
        schema: dict[str, Any],
        plural: Optional[str] = None,
        summary: str = "",
        reconciled: bool = True,
    ) -> Callable[[type], type]:
        """Class decorator: declare kind ``name`` with its JSON Schema; the class (instantiated once) reconciles it."""

        def declare(cls: type) -> type:
            self.kinds[name] = ExtensionKind(
                self, name, schema, plural or default_plural(name), summary, reconciled, cls() if reconciled else None
            )
            return cls

        return declare

    def registration(self) -> dict[str, Any]:
        """The body of ``POST /v0/extensions`` for this extension."""
        return {
            "domain": self.domain,
            "version": self.version,
            "queue": self.queue,
            "description": self.description,
            "kinds": [kind.registration() for kind in self.kinds.values()],
        }

    def register(self, api: ApiClient) -> dict[str, Any]:
        """Make the API serve this extension as declared: register it, or replace a registration that differs.

        Raises :class:`~tasks.api_client.ApiError` (422 for an incompatible change: that needs a new version).
        """
        wanted = self.registration()
        found = api.get_json("/v0/extensions", domain=self.domain, version=self.version).get("items", [])
        if not found:
            return api.request("POST", "/v0/extensions", json=wanted).json()
        current = found[0]
        if {key: current.get(key) for key in wanted} == wanted:
            return current
        headers = {"If-Match": f'"{current["resource_version"]}"'}
        return api.request("PUT", f"/v0/extensions/{current['id']}", json=wanted, headers=headers).json()


class _BoundReconciler:
    """An extension reconciler with the API client it is given, as the actor calls it."""

    def __init__(self, reconciler: ExtensionReconciler, api: ApiClient) -> None:
        self.reconciler, self.api = reconciler, api

    def reconcile(self, obj: ObjectView) -> Optional[dict[str, Any]]:
        return self.reconciler.reconcile(obj, self.api)

    def delete(self, obj: ObjectView) -> None:
        delete = getattr(self.reconciler, "delete", None)
        if delete is not None:
            delete(obj, self.api)


class ExtensionReconcileActor(ReconcileActor):
    """The reconcile actor of an extension controller: objects read and reported through the API."""

    def __init__(
        self,
        broker: JetStreamBroker,
        locks: LockManager,
        api: ApiClient,
        extensions: Iterable[Extension],
        *,
        lock_ttl: float = LOCK_TTL,
    ) -> None:
        super().__init__(broker, locks, lock_ttl=lock_ttl)
        self.api = api
        self.kinds = {kind.kind: kind for extension in extensions for kind in extension.kinds.values()}

    def model_of(self, kind: str) -> ExtensionKind:
        try:
            return self.kinds[kind]
        except KeyError:
            raise NotFound(f"no kind named {kind!r} in this controller") from None

    def load(self, model: ExtensionKind, object_id: str) -> ObjectView:
        obj = self._call(lambda: self.api.get_json(f"{model.path}/{object_id}"))
        return ObjectView(obj)

    def reconciler_of(self, model: ExtensionKind) -> Optional[Reconciler]:
        return _BoundReconciler(model.reconciler, self.api) if model.reconciler is not None else None

    def dependencies_must_be_ready(self, obj: ObjectView) -> None:
        """Extension kinds have no references the core knows of: their reconcilers wait themselves."""

    def report(self, model: ExtensionKind, obj: ObjectView, report: Report) -> None:
        body = {
            "generation": report.generation,
            "status": report.status,
            "observed": report.observed,
            "event": {"reason": report.reason, "message": report.message, "type": report.event_type},
            **report.flags,
        }
        try:
            self._call(lambda: self.api.request("PUT", f"{model.path}/{obj.id}/status", json=body))
        except ApiError as exc:
            if exc.status != 409:
                raise
            logger.info("Not reporting %s %s: %s", model.kind, obj.id, exc.detail)  # a newer generation waits

    def confirm_deletion(self, model: ExtensionKind, obj: ObjectView) -> None:
        self._call(lambda: self.api.request("POST", f"{model.path}/{obj.id}/confirm-deletion"))

    @staticmethod
    def _call(request: Callable[[], Any]) -> Any:
        try:
            return request()
        except ApiError as exc:
            if exc.status == 404:
                raise NotFound(exc.detail) from exc
            raise


def declare_extension_actor(
    broker: JetStreamBroker,
    extensions: Iterable[Extension],
    api: ApiClient,
    *,
    locks: Optional[LockManager] = None,
    lock_ttl: float = LOCK_TTL,
    max_retries: int = 8,
    min_backoff: int = 1000,
    max_backoff: int = 300_000,
) -> dramatiq.Actor:
    """Declare the extensions' reconcile actor on ``broker`` and their queues."""
    extensions = list(extensions)
    locks = locks or LockManager(connection=broker.connection, replicas=broker.replicas)
    body = ExtensionReconcileActor(broker, locks, api, extensions, lock_ttl=lock_ttl)
    queues = sorted({extension.queue for extension in extensions})
    retries = dict(max_retries=max_retries, min_backoff=min_backoff, max_backoff=max_backoff)
    return declare(broker, body, EXTENSION_ACTOR, queues, **retries)


def load_extensions(module_names: Iterable[str]) -> list[Extension]:
    """The :class:`Extension` objects the modules define (at their top level); ValueError when one defines none."""
    import importlib

    found = []
    for name in module_names:
        module = importlib.import_module(name)
        extensions = [value for value in vars(module).values() if isinstance(value, Extension)]
        if not extensions:
            raise ValueError(f"module {name!r} defines no Extension")
        found += extensions
    return found
