"""Queues, dead letters and workers over HTTP: what ``threeport queues`` and ``threeport workers`` show.

Each resource is a thin view over :class:`workers.admin.QueueAdmin` and
:func:`workers.heartbeats.live_workers`, the calls the CLI verbs make, so
the dashboard (``/ui``) and an operator's script see what the terminal does.
The admin comes from :func:`api.app.create_app`; an app made without one
answers these routes 503. NATS away or refusing is a 503 naming the cause, a
queue name NATS cannot hold a 422, a queue without a stream a 404.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import falcon
from dramatiq.errors import BrokerError

from workers.admin import QueueAdmin
from workers.dead_letters import DeadLetter
from workers.errors import InvalidName, UnknownQueue, WorkersError
from workers.heartbeats import live_workers

__all__ = ["Queues", "DeadLetters", "DeadLetterRetry", "Workers", "dead_letter_json", "MAX_DEAD_LETTERS"]

#: Most dead letters one answer lists (oldest first); ``limit`` asks for fewer.
MAX_DEAD_LETTERS = 1000
DEFAULT_DEAD_LETTERS = 100


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as the API shows it: its id, the object it was about (a reconcile's kwargs), why and when."""
    kwargs = letter.message.kwargs if letter.message else {}
    return {
        "id": letter.message_id,
        "seq": letter.seq,
        "actor": letter.actor,
        "kind": kwargs.get("kind"),
        "object_id": kwargs.get("object_id"),
        "args": list(letter.message.args) if letter.message else None,
        "kwargs": dict(kwargs) if letter.message else None,
        "reason": letter.reason,
        "error": letter.error,
        "dead_at": letter.dead_at.isoformat(),
        "deliveries": letter.deliveries,
    }


class _AdminResource:
    def __init__(self, admin: Optional[QueueAdmin]) -> None:
        self._admin = admin

    @property
    def admin(self) -> QueueAdmin:
        if self._admin is None:
            raise falcon.HTTPServiceUnavailable(
                title="Not Configured",
                description="This API runs without a connection to the queues (NATS): "
                "queue and worker routes need one (create_app's admin).",
            )
        return self._admin

    def _existing(self, queue: str) -> str:
        """``queue``, once it is known to be a queue of the deployment (422 for a bad name, 404 for none)."""
        try:
            return self.admin.existing(queue)
        except InvalidName as exc:
            raise falcon.HTTPUnprocessableEntity(title="Invalid Queue", description=str(exc)) from None
        except UnknownQueue as exc:
            raise falcon.HTTPNotFound(title="Not Found", description=str(exc)) from None


@contextmanager
def _nats_errors() -> Iterator[None]:
    """NATS unreachable, or JetStream refusing: a 503 that says which (the server is fine, its queues are not)."""
    try:
        yield
    except (BrokerError, WorkersError) as exc:
        raise falcon.HTTPServiceUnavailable(title="Queues Unavailable", description=str(exc)) from exc


class Queues(_AdminResource):
    """``/v0/queues``"""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with _nats_errors():
            stats = self.admin.stats()
        resp.media = {"items": [dataclasses.asdict(s) for s in stats]}


class DeadLetters(_AdminResource):
    """``/v0/queues/{queue}/dead-letters``: list (oldest first), purge (all, or by id)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, queue: str) -> None:
        limit = _limit(req)
        with _nats_errors():
            letters = self.admin.dead_letters(self._existing(queue), limit=limit + 1)
        resp.media = {
            "queue": queue,
            "items": [dead_letter_json(letter) for letter in letters[:limit]],
            "truncated": len(letters) > limit,
        }

    def on_delete(self, req: falcon.Request, resp: falcon.Response, queue: str) -> None:
        ids = _chosen_ids(req)
        with _nats_errors():
            self._existing(queue)
            if ids is None:
                purged = self.admin.purge_dead(queue)
                resp.media = {"queue": queue, "purged": purged, "missing": []}
            else:
                dropped, missing = self.admin.drop_dead(queue, ids)
                resp.media = {"queue": queue, "purged": len(dropped), "ids": dropped, "missing": missing}


class DeadLetterRetry(_AdminResource):
    """``/v0/queues/{queue}/dead-letters/retry``: put dead letters back on their queue with a fresh retry budget."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, queue: str) -> None:
        ids = _chosen_ids(req)
        with _nats_errors():
            report = self.admin.retry(self._existing(queue), ids)
        resp.media = {
            "queue": queue,
            "retried": report.retried,
            "missing": report.missing,
            "failed": [{"id": message_id, "reason": reason} for message_id, reason in report.failed],
        }


class Workers(_AdminResource):
    """``/v0/workers``: the live worker processes, from their heartbeats."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        with _nats_errors():
            found = live_workers(self.admin.broker.connection, self.admin.names.prefix)
        now = dt.datetime.now(dt.timezone.utc)
        resp.media = {"items": [{**w.as_dict(), "age_seconds": round(w.age(now), 3)} for w in found]}


def _chosen_ids(req: falcon.Request) -> Optional[list[str]]:
    """Which dead letters a request names: a list of ids, or None for all of them.

    From the JSON body ``{"ids": [...]}`` or ``{"all": true}``, or, without a
    body, from the query (``?id=…&id=…`` or ``?all=true``); exactly one of the two.
    """
    if req.content_length:
        body = req.get_media()
        if not isinstance(body, dict) or set(body) - {"ids", "all"}:
            raise _invalid_choice('the body must be {"ids": [...]} or {"all": true}')
        ids, every = body.get("ids"), body.get("all", False)
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids)):
            raise _invalid_choice("ids must be a list of message ids (or seq:N)")
        if not isinstance(every, bool):
            raise _invalid_choice("all must be true or false")
    else:
        ids = req.get_param_as_list("id")
        every = req.get_param("all", default="false").lower()
        if every not in ("true", "false"):
            raise _invalid_choice("all must be true or false")
        every = every == "true"
    if every == bool(ids):
        raise _invalid_choice("name the dead letters by id, or choose all of them (not both)")
    return None if every else list(ids)


def _limit(req: falcon.Request) -> int:
    value = req.get_param("limit", default=str(DEFAULT_DEAD_LETTERS))
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_DEAD_LETTERS:
        raise falcon.HTTPUnprocessableEntity(
            title="Invalid Query", description=f"limit must be a number from 1 to {MAX_DEAD_LETTERS}"
        )
    return int(value)


def _invalid_choice(description: str) -> falcon.HTTPUnprocessableEntity:
    return falcon.HTTPUnprocessableEntity(title="Invalid Choice", description=description)
