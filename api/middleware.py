"""Request middleware: tracing, request ids, bearer-token auth, body limits and content types.

Each is a small class with Falcon's ``process_request`` hook, applied in the
order request id → auth → body limit → content type, so every rejection
already carries a request id and unauthenticated clients learn nothing about
what the body would have done. The request id is also bound into the log
context for the request's duration, so every line logged meanwhile carries it.
:class:`Tracing`, first of all while tracing is on, makes each request a
server span that the outbox rows written meanwhile remember.
"""

from __future__ import annotations

import hmac
import io
import re
import uuid

import falcon
import structlog
from gunicorn.http.errors import ParseException

from workers import tracing

from .media import JSON_MEDIA_TYPES
from .settings import hash_token

__all__ = ["Tracing", "RequestId", "BearerAuth", "BodyLimit", "RequireJson", "PlainQuery"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class Tracing:
    """A server span per request (``POST /v0/workload-definitions``) while tracing is on; nothing otherwise.

    It continues the trace of the client's ``traceparent`` header, and is
    current while the request is handled, so the outbox rows written
    meanwhile keep its context. It ends with the route template (as the
    metrics label it) and the status; a 5xx marks it failed.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not tracing.enabled():
            return
        attributes = {"http.request.method": req.method, "url.path": req.path}
        req.context.trace_span = tracing.begin(req.method, kind="server", attributes=attributes, headers=req.headers)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        opened = req.context.get("trace_span")
        if opened is None:
            return
        req.context.trace_span = None
        route = req.uri_template or req.context.get("route_template")
        if route:
            opened.rename(f"{req.method} {route}")
            opened.set_attribute("http.route", route)
        opened.set_attribute("http.response.status_code", resp.status_code)
        opened.set_attribute("threeport.request_id", req.context.get("request_id"))
        opened.end(failed=resp.status_code >= 500)


class RequestId:
    """Take a sane ``X-Request-Id`` from the client or make one; echo it back."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-Id")
        req.context.request_id = given if given and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        resp.set_header("X-Request-Id", req.context.request_id)
        req.context.log_context = structlog.contextvars.bind_contextvars(request_id=req.context.request_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        tokens = req.context.get("log_context")
        if tokens:  # the thread serves other requests next: leave its log context as it was
            structlog.contextvars.reset_contextvars(**tokens)


class BearerAuth:
    """``Authorization: Bearer <token>`` on every route but the open ones.

    Tokens are compared as hashes, in constant time, against every stored
    hash (no early exit that would tell which one nearly matched).
    """

    def __init__(self, token_hashes: frozenset[str], *, open_paths: frozenset[str]) -> None:
        self.token_hashes = token_hashes
        self.open_paths = open_paths

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in self.open_paths:
            return
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise falcon.HTTPUnauthorized(
                title="Unauthorized",
                description="Send 'Authorization: Bearer <token>'.",
                challenges=["Bearer"],
            )
        presented = hash_token(token.strip())
        matched = False
        for stored in self.token_hashes:
            matched |= hmac.compare_digest(presented, stored)
        if not matched:
            raise falcon.HTTPUnauthorized(
                title="Unauthorized", description="The bearer token is not valid.", challenges=["Bearer"]
            )


class BodyLimit:
    """Refuse bodies over ``max_bytes`` (413) before anything reads them.

    Falcon has no limit of its own. A declared ``Content-Length`` is checked
    at once; a body without one (chunked) is read up to the limit plus one
    byte, and what was read is handed on in memory.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method not in BODY_METHODS:
            return
        length = req.content_length
        if length is not None:
            if length > self.max_bytes:
                raise self._too_large()
            return
        if not req.get_header("Transfer-Encoding"):
            return  # no body at all (a DELETE, say)
        try:
            body = req.stream.read(self.max_bytes + 1)
        except (ParseException, OSError) as exc:  # a malformed chunk, or the client went away mid-body
            raise falcon.HTTPBadRequest(
                title="Malformed Body", description=f"The chunked body could not be read: {exc}"
            ) from None
        if len(body) > self.max_bytes:
            raise self._too_large()
        req.env["wsgi.input"] = req.stream = io.BytesIO(body)
        req.env["CONTENT_LENGTH"] = str(len(body))

    def _too_large(self) -> falcon.HTTPContentTooLarge:
        return falcon.HTTPContentTooLarge(
            title="Content Too Large", description=f"Request bodies are limited to {self.max_bytes} bytes."
        )


class RequireJson:
    """Bodies must be JSON (``application/json``, or ``application/merge-patch+json`` for PATCH).

    The media type is matched without regard to case, and handed on in lower
    case, as Falcon looks its handlers up by the exact type.
    """

    ACCEPTED = {
        "POST": ("application/json",),
        "PUT": ("application/json",),
        "PATCH": JSON_MEDIA_TYPES,
        "DELETE": ("application/json",),
    }

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        accepted = self.ACCEPTED.get(req.method)
        if accepted is None or not (req.content_length or req.get_header("Transfer-Encoding")):
            return  # no body, nothing to check (a handler that needs one says so)
        media_type = (req.content_type or "").split(";")[0].strip().lower()
        if media_type not in accepted:
            raise falcon.HTTPUnsupportedMediaType(
                title="Unsupported Media Type",
                description=f"Send the body as {' or '.join(accepted)} (got {media_type or 'no content type'}).",
            )
        req.content_type = media_type


class PlainQuery:
    """Query values must be text a filter can compare: NUL (``%00``) is refused with 400.

    PostgreSQL cannot hold NUL in a text value, so no object could match it.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if "%00" not in req.query_string:
            return
        for name, value in req.params.items():
            if any("\x00" in v for v in (value if isinstance(value, list) else [value])):
                raise falcon.HTTPBadRequest(
                    title="Invalid Query", description=f"query parameter {name!r} contains NUL (%00)"
                )
