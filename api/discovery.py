"""What the API serves, for clients that adapt to it: ``/version`` and ``/v0/kinds``.

``/v0/kinds`` lists every kind with its path, the methods its routes take
and its fields (API name, JSON Schema, whether a client may or must set
it, what it references), so the CLI learns kinds, plurals and references
from the server it talks to rather than from its own copy of the models.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import falcon

from models import registry
from models.base import KindModel, ReconciledModel, RecordModel
from models.extension_kinds import ExtensionCatalog
from models.schema import fields_of

__all__ = ["Version", "Kinds", "describe_kind", "server_version", "API_VERSIONS"]

API_VERSIONS = ("v0",)


def server_version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("threeport")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def describe_kind(model: type[KindModel]) -> dict[str, Any]:
    """One kind as ``/v0/kinds`` lists it."""
    reconciled = issubclass(model, ReconciledModel)
    writable_record = issubclass(model, RecordModel) and model.client_writable
    return {
        "kind": model.kind,
        "plural": model.plural,
        "path": model.collection_path(),
        "summary": model.summary,
        "reconciled": reconciled,
        "queue": model.queue if reconciled else None,
        "depends_on": [model._meta.fields[name].column_name for name in model.depends_on] if reconciled else [],
        "writable": reconciled or writable_record,
        "fields": [
            {
                "name": info.name,
                "schema": info.value_schema(),
                "writable": info.writable,
                "required": info.required,
                "secret": info.secret,
                "references": info.references,
                "description": info.description,
            }
            for info in fields_of(model).values()
        ],
    }


class Version:
    """``/version``"""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"server": server_version(), "api_versions": list(API_VERSIONS)}


class Kinds:
    """``/v0/kinds``: the core kinds, then the extension kinds of ``catalog``."""

    def __init__(self, catalog: ExtensionCatalog) -> None:
        self.catalog = catalog

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        kinds = [*registry.kinds(), *self.catalog.models()]
        resp.media = {"items": [describe_kind(model) for model in kinds]}
