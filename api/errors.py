"""Every error answer is ``application/problem+json`` (RFC 9457), and none carries a traceback.

Falcon's own ``HTTPError`` subclasses are serialised here; anything
unexpected becomes a plain 500 problem whose detail names the request id, so
an operator can find the logged traceback without the client ever seeing it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import falcon

from models import errors as store_errors

__all__ = ["serialize_problem", "handle_unexpected", "handle_store_error", "problem_body", "PROBLEM_JSON"]

PROBLEM_JSON = "application/problem+json"

logger = logging.getLogger(__name__)


def problem_body(*, status: int, title: str, detail: Optional[str] = None, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem object."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def serialize_problem(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon error serializer: problem+json whatever the client accepts."""
    extra = exc.to_dict().get("errors") if hasattr(exc, "to_dict") else None
    body = problem_body(
        status=exc.status_code,
        title=exc.title or falcon.code_to_http_status(exc.status_code),
        detail=exc.description or _default_detail(req, exc),
        instance=req.path,
        errors=extra,
        request_id=req.context.get("request_id"),
    )
    resp.content_type = PROBLEM_JSON
    resp.text = json.dumps(body)
    resp.append_header("Vary", "Accept")


def _default_detail(req: falcon.Request, exc: falcon.HTTPError) -> Optional[str]:
    """What Falcon's own answers leave unsaid: no route there, or not that method."""
    if exc.status_code == 404:
        return f"Nothing is served at {req.path}."
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow")
        return f"{req.method} is not allowed on {req.path}" + (f"; allowed: {allowed}." if allowed else ".")
    return None


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    """Last-resort handler: log the traceback, answer a 500 problem without it."""
    if isinstance(ex, falcon.HTTPError):
        raise ex
    request_id = req.context.get("request_id")
    logger.exception("Unhandled error in %s %s (request %s)", req.method, req.path, request_id)
    raise falcon.HTTPInternalServerError(
        title="Internal Server Error",
        description=f"The server failed to handle this request; quote request id {request_id} when reporting it.",
    )


#: How the store's errors read over HTTP: (status, title).
STORE_ERRORS: dict[type[store_errors.StoreError], tuple[str, str]] = {
    store_errors.NotFound: (falcon.HTTP_404, "Not Found"),
    store_errors.Conflict: (falcon.HTTP_409, "Conflict"),
    store_errors.PreconditionFailed: (falcon.HTTP_412, "Precondition Failed"),
    store_errors.InvalidObject: (falcon.HTTP_422, "Invalid Object"),
    store_errors.RetriesExhausted: (falcon.HTTP_503, "Busy"),
    store_errors.Unavailable: (falcon.HTTP_503, "Database Unavailable"),
    store_errors.ConfigurationError: (falcon.HTTP_503, "Not Configured"),
}


def handle_store_error(req: falcon.Request, resp: falcon.Response, ex: store_errors.StoreError, params: dict) -> None:
    """Answer a store error with its status and message; others are unexpected (500)."""
    for error_class, (status, title) in STORE_ERRORS.items():
        if isinstance(ex, error_class):
            raise falcon.HTTPError(status, title=title, description=str(ex))
    handle_unexpected(req, resp, ex, params)
