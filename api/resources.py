"""One generic set of resources serves every kind.

A kind is a model in :mod:`models.registry`; its routes are
``/v0/<plural>`` (list, create) and ``/v0/<plural>/{id}`` (get, patch, put,
delete), plus ``/<plural>/versions``. Every write goes through
:mod:`models.store` and, once committed, its outbox rows are published at
once; a failed publish never fails the request (the relay publishes what is
left). ``resource_version`` is the ETag, and ``If-Match`` makes a write
conditional. Records (events, parsed documents, references) are served by
:class:`RecordCollection` and :class:`RecordItem`: listed and read, and
created and deleted only when the kind lets clients write it.

Objects are shown by :func:`as_json` with the API names of
:mod:`models.schema`: references as ``<name>_id``, secrets never.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any, Callable, Optional, Sequence

import falcon

from models import store
from models.base import KindModel, ReconciledModel, RecordModel
from models.outbox import Outbox
from models.schema import fields_of

__all__ = [
    "Collection",
    "Item",
    "RecordCollection",
    "RecordItem",
    "WritableRecordCollection",
    "WritableRecordItem",
    "Versions",
    "as_json",
    "Publisher",
    "LIST_PARAMETERS",
]

logger = logging.getLogger(__name__)

#: Fields a PUT may leave out (they then stay as they are): an operator's switch, not the spec.
OPTIONAL_ON_PUT = frozenset({"interrupt_reconciliation"})
#: Publishes committed outbox rows (the fast path); failures are logged, never raised.
Publisher = Callable[[Sequence[Outbox]], None]
API_VERSION = "v0"
#: Query parameters of a list that are not filters.
LIST_PARAMETERS = frozenset({"limit", "after", "order"})


def as_json(obj: KindModel) -> dict[str, Any]:
    """The object as the API shows it: fields by API name, secrets left out."""
    out: dict[str, Any] = {"kind": obj.kind}
    data = obj.__data__
    for name, info in fields_of(type(obj)).items():
        if info.secret:
            continue
        value = data.get(info.field.name)
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        out[name] = value
    return out


def _if_match(req: falcon.Request) -> Optional[str]:
    value = req.get_header("If-Match")
    return value.strip().strip('"') if value else None


def _body(req: falcon.Request) -> dict[str, Any]:
    body = req.get_media()
    if not isinstance(body, dict):
        raise falcon.HTTPUnprocessableEntity(title="Invalid Object", description="The body must be a JSON object.")
    return body


def _answer(resp: falcon.Response, obj: ReconciledModel, status: str = falcon.HTTP_200) -> None:
    resp.status = status
    resp.etag = str(obj.resource_version)
    resp.media = as_json(obj)


class _KindResource:
    def __init__(self, model: type[ReconciledModel], publish: Publisher) -> None:
        self.model = model
        self.publish = publish

    def _published(self, written: store.Written) -> ReconciledModel:
        try:
            self.publish(written.outbox)
        except Exception:  # the relay publishes whatever the fast path could not
            logger.warning("Fast-path publish failed for %s %s.", self.model.kind, written.obj.id, exc_info=True)
        return written.obj


class Collection(_KindResource):
    """``/v0/<plural>``"""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = dict(req.params)
        repeated = sorted(name for name, value in params.items() if isinstance(value, list))
        if repeated:
            raise falcon.HTTPUnprocessableEntity(
                title="Invalid Query", description=f"give each query parameter once ({', '.join(repeated)} repeated)"
            )
        limit = params.pop("limit", "50")
        after = params.pop("after", None)
        order = params.pop("order", "asc")
        try:
            limit_value = int(limit)
        except ValueError:
            raise falcon.HTTPUnprocessableEntity(title="Invalid Query", description="limit must be a number") from None
        if order not in ("asc", "desc"):
            raise falcon.HTTPUnprocessableEntity(title="Invalid Query", description="order must be 'asc' or 'desc'")
        items, next_cursor = store.list_objects(
            self.model, limit=limit_value, after=after, filters=params, newest_first=order == "desc"
        )
        resp.media = {"items": [as_json(o) for o in items], "next": next_cursor}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        obj = self._published(store.create(self.model, _body(req)))
        resp.location = f"{self.model.collection_path()}/{obj.id}"
        _answer(resp, obj, falcon.HTTP_201)


class Item(_KindResource):
    """``/v0/<plural>/{object_id}``"""

    def on_get(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        _answer(resp, store.get(self.model, object_id))

    def on_patch(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        written = store.update(self.model, object_id, _body(req), if_match=_if_match(req))
        _answer(resp, self._published(written))

    def on_put(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        body = _body(req)
        writable = {info.name for info in fields_of(self.model).values() if info.writable}
        missing = sorted(writable - set(body) - OPTIONAL_ON_PUT)
        if missing:
            raise falcon.HTTPUnprocessableEntity(
                title="Invalid Object", description=f"PUT replaces the object: missing {', '.join(missing)}"
            )
        written = store.update(self.model, object_id, body, if_match=_if_match(req))
        _answer(resp, self._published(written))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        written = store.schedule_deletion(self.model, object_id, if_match=_if_match(req))
        _answer(resp, self._published(written), falcon.HTTP_202)


class RecordCollection:
    """``/v0/<plural>`` of a record kind: list (read-only; the control plane writes these)."""

    def __init__(self, model: type[RecordModel]) -> None:
        self.model = model

    on_get = Collection.on_get


class RecordItem:
    """``/v0/<plural>/{object_id}`` of a record kind: get."""

    def __init__(self, model: type[RecordModel]) -> None:
        self.model = model

    def on_get(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        resp.media = as_json(store.get(self.model, object_id))


class WritableRecordCollection(RecordCollection):
    """``/v0/<plural>`` of a record kind clients may create."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        record = store.create_record(self.model, _body(req))
        resp.location = f"{self.model.collection_path()}/{record.id}"
        resp.status = falcon.HTTP_201
        resp.media = as_json(record)


class WritableRecordItem(RecordItem):
    """``/v0/<plural>/{object_id}`` of a record kind clients may delete (at once: records have no lifecycle)."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, object_id: str) -> None:
        store.delete_record(self.model, object_id)
        resp.status = falcon.HTTP_204


class Versions:
    """``/<plural>/versions``"""

    def __init__(self, model: type[KindModel]) -> None:
        self.model = model

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"kind": self.model.kind, "versions": [API_VERSION]}
