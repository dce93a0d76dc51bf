"""The Falcon application factory.

``create_app(settings, checks=…)`` builds the WSGI app from explicit settings
(what tests use); ``get_app()`` reads the environment and is what gunicorn
runs (``gunicorn 'api.app:get_app()'``).
"""

from __future__ import annotations

from typing import Mapping, Optional

import falcon

from models import StoreError, bind, database_from_url, registry, secrets
from models.base import ReconciledModel, RecordModel
from models.extension_kinds import Extension, ExtensionCatalog
from workers.admin import QueueAdmin
from workers.broker import JetStreamBroker
from workers.logs import configure_from_env as configure_logging
from workers.outbox_relay import FastPath
from workers.tracing import configure_from_env as configure_tracing

from .checks import database_check, nats_check
from .discovery import Kinds, Version
from .docs import Docs
from .errors import handle_store_error, handle_unexpected, serialize_problem
from .extensions import ExtensionCollection, ExtensionItem, ExtensionSink
from .health import Check, Healthz, Readyz
from .media import JSON_MEDIA_TYPES, json_handler
from .metrics import Metrics, RequestMetrics
from .middleware import BearerAuth, BodyLimit, PlainQuery, RequestId, RequireJson, Tracing
from .openapi import OpenApi
from .operations import DeadLetterRetry, DeadLetters, Queues, Workers
from .proxy import SINK_PREFIX, ExtensionProxy, RouteCache
from .resources import (
    API_VERSION,
    Collection,
    Item,
    Publisher,
    RecordCollection,
    RecordItem,
    Versions,
    WritableRecordCollection,
    WritableRecordItem,
)
from .settings import Settings
from .ui import Dashboard

__all__ = ["create_app", "get_app", "OPEN_PATHS"]

#: Routes that answer without a token (probes, and what reveals no data: versions, the API's description,
#: the dashboard's page, whose script asks for a token).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/version", "/openapi.json", "/docs", "/metrics", "/ui"})


def create_app(
    settings: Settings,
    *,
    checks: Optional[Mapping[str, Check]] = None,
    publish: Optional[Publisher] = None,
    admin: Optional[QueueAdmin] = None,
) -> falcon.App:
    """The API for every registered kind; ``publish`` sends committed outbox rows (fast path).

    ``admin`` serves the queues, dead letters and workers (``/v0/queues``, ``/v0/workers``); without it they answer 503.
    """
    app = falcon.App(
        middleware=[
            Tracing(),
            RequestMetrics(),
            RequestId(),
            BearerAuth(settings.token_hashes, open_paths=OPEN_PATHS),
            BodyLimit(settings.max_body_bytes),
            RequireJson(),
            PlainQuery(),
        ]
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.media_handlers.update(dict.fromkeys(JSON_MEDIA_TYPES, json_handler()))
    app.set_error_serializer(serialize_problem)
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(StoreError, handle_store_error)
    app.add_route("/healthz", Healthz())
    app.add_route("/readyz", Readyz(checks or {}))
    app.add_route("/metrics", Metrics())
    app.add_route("/version", Version())
    catalog = ExtensionCatalog()  # the extension kinds this app serves, kept current from the database
    publish = publish or _no_publish
    app.add_route(f"/{API_VERSION}/kinds", Kinds(catalog))
    app.add_route("/openapi.json", OpenApi(app, catalog))
    app.add_route("/docs", Docs(app, catalog))
    app.add_route("/ui", Dashboard())
    app.add_route(f"/{API_VERSION}/queues", Queues(admin))
    app.add_route(f"/{API_VERSION}/queues/{{queue}}/dead-letters", DeadLetters(admin))
    app.add_route(f"/{API_VERSION}/queues/{{queue}}/dead-letters/retry", DeadLetterRetry(admin))
    app.add_route(f"/{API_VERSION}/workers", Workers(admin))
    for model in registry.kinds():
        collection, item = _resources(model, publish, catalog)
        app.add_route(model.collection_path(), collection)
        app.add_route(f"{model.collection_path()}/{{object_id}}", item)
        app.add_route(f"/{model.plural}/versions", Versions(model))
    # What no route above matched, once the middleware let it in: extension kinds' objects,
    # else extensions' own API servers.
    routes = RouteCache()
    proxy = ExtensionProxy(routes=routes, max_body_bytes=settings.max_body_bytes)
    sink = ExtensionSink(catalog, publish, proxy, proxied=lambda path: routes.route_for(path) is not None)
    app.add_sink(sink, SINK_PREFIX)
    return app


def _resources(model, publish: Publisher, catalog: ExtensionCatalog) -> tuple[object, object]:
    """The collection and item resources of ``model``, by its family."""
    if model is Extension:
        return ExtensionCollection(catalog), ExtensionItem(catalog)
    if issubclass(model, ReconciledModel):
        return Collection(model, publish), Item(model, publish)
    if issubclass(model, RecordModel) and model.client_writable:
        return WritableRecordCollection(model), WritableRecordItem(model)
    return RecordCollection(model), RecordItem(model)


def _no_publish(rows) -> None:
    """Without a broker the relay publishes everything (a few seconds later)."""


def get_app() -> falcon.App:
    """The app gunicorn serves, configured from the environment."""
    configure_logging()
    configure_tracing("threeport-api")
    settings = Settings.from_env()
    bind(database_from_url(settings.database_url))
    secrets.configure(settings.encryption_keys)
    broker = JetStreamBroker(
        settings.nats_url, prefix=settings.nats_prefix, replicas=settings.nats_replicas, name="threeport-api"
    )
    return create_app(
        settings,
        checks={"database": database_check, "nats": nats_check(broker.connection)},
        publish=FastPath(broker),
        admin=QueueAdmin(broker),
    )
