"""The proxy to extensions' own API servers: a Falcon sink behind the core's middleware.

Falcon tries its routes first and hands a sink only what none of them
matched, and the middleware (request id, bearer auth, body limit, JSON
bodies) has run by then: a request reaches an extension only once the core
let it in. The sink takes paths whose first segment is a domain; the
longest registered prefix (:class:`models.extensions.ExtensionApiRoute`)
picks the upstream. Each app caches the route table and checks the
database's fingerprint of it at most every ``refresh_seconds``, and at once
when no route matches (a route registered a moment ago, through any
replica, is used at once; a deleted one stops within the interval).

The upstream's answer is relayed as it comes (status, headers, raw body
bytes), so streamed answers stream. httpx is imported here only.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from typing import Callable, Iterator, Optional

import falcon
import httpx

from models import StoreError
from models.extensions import ExtensionApiRoute, changed_routes

from .settings import hash_token

__all__ = ["ExtensionProxy", "RouteCache", "SINK_PREFIX", "REFRESH_SECONDS", "PRINCIPAL_HEADER"]

logger = logging.getLogger(__name__)

#: Paths the sink is given (when no core route matched): a first segment that looks like a domain.
SINK_PREFIX = re.compile(r"/[^/]+\.[^/]+(?:/|$)")
#: Longest time a replica serves a route table without checking it is still current.
REFRESH_SECONDS = 2.0
#: Who the core authenticated, for the extension: a short digest of the bearer token, never the token.
PRINCIPAL_HEADER = "X-Threeport-Principal"

#: Headers of one connection only (RFC 9110 §7.6.1), never relayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers the proxy sets itself, or must not pass on (the client's token stays with the core).
_NOT_FORWARDED = frozenset(
    {"authorization", "host", "content-length", "x-forwarded-proto", "x-forwarded-host", PRINCIPAL_HEADER.lower()}
)
#: Response headers the serving WSGI server sets itself.
_NOT_RELAYED = frozenset({"date", "server"})
_SAFE_PATH = "/:@!$&'()*+,;=-._~"


class RouteCache:
    """The route table of one app, refreshed from the database when its fingerprint moves."""

    def __init__(self, *, refresh_seconds: Optional[float] = None, clock: Callable[[], float] = time.monotonic) -> None:
        #: Seconds between checks of the table (:data:`REFRESH_SECONDS` when not given).
        self.refresh_seconds = REFRESH_SECONDS if refresh_seconds is None else refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._fingerprint: Optional[str] = None
        self._routes: list[ExtensionApiRoute] = []
        self._checked_at = float("-inf")

    def route_for(self, path: str) -> Optional[ExtensionApiRoute]:
        """The route with the longest prefix ``path`` is under, or None."""
        routes, checked = self._current(force=False)
        route = _longest_match(routes, path)
        if route is None and not checked:  # perhaps registered a moment ago, through any replica
            route = _longest_match(self._current(force=True)[0], path)
        return route

    def _current(self, *, force: bool) -> tuple[list[ExtensionApiRoute], bool]:
        """The table, and whether it was checked against the database just now."""
        with self._lock:
            now = self._clock()
            due = force or now - self._checked_at >= self.refresh_seconds
            if due:
                self._refresh(now)
            return self._routes, due

    def _refresh(self, now: float) -> None:
        try:
            changed = changed_routes(self._fingerprint)
        except StoreError:
            if self._fingerprint is None:
                raise
            logger.warning("Could not refresh the extension routes; serving the cached ones.", exc_info=True)
            return
        if changed is not None:
            self._fingerprint, self._routes = changed
        self._checked_at = now


class ExtensionProxy:
    """The sink: forward a request under a registered prefix to its extension's API server."""

    def __init__(self, *, routes: RouteCache, max_body_bytes: int) -> None:
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        # No proxies from the environment, no redirects followed: the client sees the upstream's answer.
        self.client = httpx.Client(trust_env=False, follow_redirects=False)

    def __call__(self, req: falcon.Request, resp: falcon.Response) -> None:
        if any(segment in (".", "..") for segment in req.path.split("/")):
            raise falcon.HTTPBadRequest(title="Bad Request", description="Paths cannot have '.' or '..' segments.")
        route = self.routes.route_for(req.path)
        if route is None:
            raise falcon.HTTPRouteNotFound()
        request = self.client.build_request(
            req.method,
            route.upstream.rstrip("/") + _target(req),
            headers=_forwarded_headers(req),
            content=self._body(req),
            timeout=httpx.Timeout(route.timeout_seconds),
        )
        try:
            upstream = self.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            logger.warning("Extension %s (%s) timed out: %s", route.extension, route.upstream, exc)
            raise falcon.HTTPGatewayTimeout(
                title="Gateway Timeout",
                description=f"The API server of extension {route.extension!r} did not answer "
                f"within {route.timeout_seconds} s.",
            ) from exc
        except httpx.HTTPError as exc:
            logger.warning("Extension %s (%s) unreachable: %s", route.extension, route.upstream, exc)
            raise falcon.HTTPBadGateway(
                title="Bad Gateway",
                description=f"The API server of extension {route.extension!r} could not be reached.",
            ) from exc
        _relay(upstream, req, resp)

    def _body(self, req: falcon.Request) -> bytes:
        # POST/PUT/PATCH bodies were size-checked by the BodyLimit middleware; others are checked here.
        length = req.content_length or 0
        if length > self.max_body_bytes:
            raise falcon.HTTPContentTooLarge(
                title="Content Too Large", description=f"Request bodies are limited to {self.max_body_bytes} bytes."
            )
        return req.bounded_stream.read() if length else b""


class _RelayedBody:
    """The upstream's body as the WSGI iterable: raw bytes as they arrive; closing it closes the upstream answer."""

    def __init__(self, upstream: httpx.Response) -> None:
        self.upstream = upstream

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.upstream.iter_raw()
        except httpx.HTTPError:
            # Headers are sent already: dropping the connection is the only way left to say the body is cut.
            logger.warning("Extension answer cut short: %s %s", self.upstream.request.method, self.upstream.request.url)
            raise

    def close(self) -> None:
        self.upstream.close()


def _relay(upstream: httpx.Response, req: falcon.Request, resp: falcon.Response) -> None:
    resp.status = upstream.status_code
    dropped = HOP_BY_HOP | _NOT_RELAYED | _connection_tokens(upstream.headers.get_list("connection"))
    for name, value in upstream.headers.multi_items():
        if name.lower() not in dropped:
            resp.append_header(name, value)
    if req.method == "HEAD" or upstream.status_code in (204, 304):
        upstream.close()  # no body: Falcon would never iterate (nor close) it
        return
    resp.stream = _RelayedBody(upstream)  # raw bytes, still encoded: the upstream's Content-Length holds


def _forwarded_headers(req: falcon.Request) -> list[tuple[str, str]]:
    dropped = HOP_BY_HOP | _NOT_FORWARDED | _connection_tokens([req.get_header("Connection") or ""])
    headers = [(name, value) for name, value in _raw_headers(req) if name not in dropped]
    client_chain = [value for name, value in headers if name == "x-forwarded-for"]
    headers = [(name, value) for name, value in headers if name != "x-forwarded-for"]
    remote = req.remote_addr or "unknown"
    headers += [
        ("X-Forwarded-For", ", ".join([*client_chain, remote])),
        ("X-Forwarded-Proto", req.scheme),
        ("X-Forwarded-Host", req.host),
        ("X-Request-Id", req.context.request_id),
    ]
    token = (req.get_header("Authorization") or "").partition(" ")[2].strip()
    if token:
        headers.append((PRINCIPAL_HEADER, f"token:{hash_token(token)[:16]}"))
    return headers


def _raw_headers(req: falcon.Request) -> Iterator[tuple[str, str]]:
    """The request's headers, lower-cased, from the WSGI environ (Falcon's ``req.headers`` folds repeats)."""
    for key, value in req.env.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
            if name != "x-request-id":  # the RequestId middleware's (the client's when sane) is sent instead
                yield name, value
    if req.env.get("CONTENT_TYPE"):
        yield "content-type", req.env["CONTENT_TYPE"]


def _connection_tokens(values: list[str]) -> frozenset[str]:
    """Headers named in ``Connection`` are hop-by-hop too."""
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def _target(req: falcon.Request) -> str:
    """The path (trailing slash kept, re-quoted) and query string as the client sent them."""
    path = req.env.get("PATH_INFO") or "/"
    try:
        path = path.encode("latin-1").decode("utf-8", "replace")  # WSGI carries the path's bytes as latin-1
    except UnicodeEncodeError:
        pass
    query = req.env.get("QUERY_STRING")
    target = urllib.parse.quote(path, safe=_SAFE_PATH)
    return f"{target}?{query}" if query else target


def _longest_match(routes: list[ExtensionApiRoute], path: str) -> Optional[ExtensionApiRoute]:
    # Routes come longest prefix first; Falcon strips a trailing slash, so '/a.com/v1' is under '/a.com/v1/'.
    under = path if path.endswith("/") else path + "/"
    return next((route for route in routes if under.startswith(route.prefix)), None)
