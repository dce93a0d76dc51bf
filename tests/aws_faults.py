"""A fault-injecting HTTP proxy in front of the moto server: AWS that fails, stalls and counts on demand.

:class:`FaultProxy` is a real HTTP server on a free loopback port (an
``AwsAccount``'s ``endpoint_url`` points at it, so workers in other
processes reach it too) that relays every request to moto as it came
(method, path, query, headers, body) and moto's answer back. It names each
request by its AWS operation: ``Action=`` for the query protocols (STS, IAM,
EC2, RDS), ``X-Amz-Target`` for the JSON protocol, the path for RPCv2 CBOR,
and for REST services (S3, EKS) the operation of botocore's own service
model whose HTTP method and request URI match, the service being the one
the request is signed for. A test adds rules while it runs:

- ``fail("CreateBucket", "AccessDenied", 403, times=1)`` answers matching
  requests with that AWS error, in the body format of the request's
  protocol, instead of relaying them;
- ``hold(match)`` keeps matching requests waiting until ``release()``
  (``wait_held(timeout)`` returns the first one held), to interrupt a
  client between two calls, e.g. by killing the worker process making them.
  Released, a held request goes on to moto even if its client died
  meanwhile (AWS got it, the client never saw the answer);
  ``release(drop=True)`` closes held connections unanswered instead;
- ``requests`` lists the names of the requests seen, in order (``count``
  counts one), to count attempts.

A rule matches an operation name, or a :class:`Match` (``rest("POST",
r"^/clusters$")``: method, path regex, service).
"""

from __future__ import annotations

import functools
import http.client
import json
import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional, Union
from xml.sax.saxutils import escape

import botocore.session
import pytest

__all__ = ["FaultProxy", "Match", "AwsRequest", "rest", "aws_proxy"]

#: Headers that belong to one connection, not to the request: never relayed.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "expect", "content-length"}
)
#: Signing names that are not their botocore service's name.
_SERVICE_OF_SIGNING_NAME = {"monitoring": "cloudwatch", "elasticloadbalancing": "elbv2", "email": "ses"}
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_RPC_V2_PATH = re.compile(r"/service/[^/]+/operation/([^/?]+)")


@dataclass(frozen=True)
class AwsRequest:
    """One request the proxy received, named."""

    #: The service it is signed for (``s3``, ``sts``, ``eks``…), "" when unsigned.
    service: str
    #: The AWS operation (``CreateBucket``), or ``"<METHOD> <path>"`` when it cannot be named.
    action: str
    #: ``query``, ``ec2``, ``json``, ``rest-json``, ``rest-xml`` or ``smithy-rpc-v2-cbor``.
    protocol: str
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True)
class Match:
    """Which requests a rule applies to: every part given must match (``path`` is a regex searched in the path)."""

    action: Optional[str] = None
    method: Optional[str] = None
    path: Optional[str] = None
    service: Optional[str] = None

    def matches(self, request: AwsRequest) -> bool:
        return (
            (self.action is None or self.action == request.action)
            and (self.method is None or self.method.upper() == request.method)
            and (self.path is None or re.search(self.path, request.path) is not None)
            and (self.service is None or self.service == request.service)
        )


def rest(method: str, path: str, service: Optional[str] = None) -> Match:
    """A match on a REST call's method and path (a regex), e.g. ``rest("POST", r"^/clusters$")`` for CreateCluster."""
    return Match(method=method, path=path, service=service)


Matcher = Union[str, Match]


def _as_match(match: Matcher) -> Match:
    return match if isinstance(match, Match) else Match(action=match)


@dataclass
class _Failure:
    match: Match
    code: str
    status: int
    message: str
    remaining: Optional[int]


@dataclass
class _Hold:
    match: Match
    released: threading.Event = field(default_factory=threading.Event)
    drop: bool = False


class FaultProxy:
    """The proxy in front of ``upstream`` (moto's URL); ``url`` is where clients reach it. A context manager."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.upstream_timeout = upstream_timeout
        self._changed = threading.Condition()
        self._failures: list[_Failure] = []
        self._holds: list[_Hold] = []
        self._held: list[AwsRequest] = []
        self._log: list[AwsRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, name="aws-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; requests still held are dropped (their connections closed unanswered)."""
        with self._changed:
            for hold in self._holds:
                hold.drop = True
                hold.released.set()
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Rules ------------------------------------------------------------------------

    def fail(
        self, action: Matcher, code: str, status: int = 400, times: Optional[int] = 1, message: Optional[str] = None
    ) -> None:
        """Answer the next ``times`` matching requests (every one with ``times=None``) with AWS error ``code``."""
        failure = _Failure(_as_match(action), code, status, message or f"{code} (injected by the test proxy)", times)
        with self._changed:
            self._failures.append(failure)

    def hold(self, match: Matcher) -> None:
        """Keep matching requests waiting, unanswered and not relayed, until :meth:`release`."""
        with self._changed:
            self._holds.append(_Hold(_as_match(match)))

    def wait_held(self, timeout: float) -> AwsRequest:
        """The first request held and still waiting, once there is one; TimeoutError after ``timeout`` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._held, timeout):
                raise TimeoutError(f"no request was held within {timeout} s")
            return self._held[0]

    def release(self, *, drop: bool = False) -> None:
        """End every hold: held requests go on to moto, or with ``drop`` their connections close unanswered.

        A request whose client died meanwhile (a killed worker) still reaches
        moto unless dropped: as a real request that AWS received and the
        client never saw the answer of.
        """
        with self._changed:
            holds, self._holds = self._holds, []
            for hold in holds:
                hold.drop = drop
                hold.released.set()
            self._changed.notify_all()

    def clear(self) -> None:
        """Remove every failure rule and release every hold."""
        self.release()
        with self._changed:
            self._failures = []

    # The log ----------------------------------------------------------------------

    @property
    def requests(self) -> list[str]:
        """The name of every request received (relayed, failed or held), in order."""
        with self._changed:
            return [request.action for request in self._log]

    @property
    def log(self) -> list[AwsRequest]:
        """Every request received, in order."""
        with self._changed:
            return list(self._log)

    @property
    def held(self) -> list[AwsRequest]:
        """The requests waiting on a hold now."""
        with self._changed:
            return list(self._held)

    def count(self, action: Matcher) -> int:
        """How many requests matched ``action``."""
        match = _as_match(action)
        return sum(1 for request in self.log if match.matches(request))

    # What the handler asks -------------------------------------------------------

    def _received(self, request: AwsRequest) -> Optional[_Hold]:
        with self._changed:
            self._log.append(request)
            return next((hold for hold in self._holds if hold.match.matches(request)), None)

    def _wait_for_release(self, request: AwsRequest, hold: _Hold) -> bool:
        """Wait while ``hold`` lasts: whether to go on (False: drop the request)."""
        with self._changed:
            self._held.append(request)
            self._changed.notify_all()
        try:
            hold.released.wait()  # set by release() or stop()
        finally:
            with self._changed:
                self._held.remove(request)
        return not hold.drop

    def _failure_for(self, request: AwsRequest) -> Optional[_Failure]:
        with self._changed:
            for failure in self._failures:
                if failure.match.matches(request):
                    if failure.remaining is not None:
                        failure.remaining -= 1
                        if failure.remaining <= 0:
                            self._failures.remove(failure)
                    return failure
        return None


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects
    timeout = 300  # an idle kept-alive connection's thread ends at last

    def do_any(self) -> None:
        try:
            body = self._read_body()
            request = _named(self.command, self.path, self.headers, body)
            hold = self.proxy._received(request)
            if hold is not None and not self.proxy._wait_for_release(request, hold):
                self.close_connection = True  # dropped: the client sees the connection close unanswered
                return
            failure = self.proxy._failure_for(request)
            if failure is not None:
                self._answer(failure.status, *_error_answer(request, failure))
            else:
                self._answer(*self._relay(body))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away (e.g. it was killed while held)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_any

    def log_message(self, format: str, *args) -> None:
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.proxy.upstream, timeout=self.proxy.upstream_timeout)
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    connection.putheader(name, value)
            if body or self.command in ("POST", "PUT", "PATCH"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            data = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            if self.command == "HEAD" and response.getheader("Content-Length"):
                headers.append(("Content-Length", response.getheader("Content-Length")))
            return response.status, headers, data
        except (OSError, http.client.HTTPException) as exc:
            return 502, [("Content-Type", "text/plain")], f"the test proxy cannot reach moto: {exc}".encode()
        finally:
            connection.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status)  # moto's Date and Server headers, not a second pair of ours
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in headers):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
        self.wfile.flush()


# Naming requests ----------------------------------------------------------------


def _named(method: str, target: str, headers, body: bytes) -> AwsRequest:
    """The request, with the service it is signed for, its protocol and its operation's name."""
    path, _, query = target.partition("?")
    lowered = {name.lower(): value for name, value in headers.items()}
    presigned = dict(urllib.parse.parse_qsl(query)).get("X-Amz-Credential", "")
    scope = _CREDENTIAL_SCOPE.search(lowered.get("authorization") or f"Credential={presigned}")
    service = scope.group(1) if scope else ""
    if "x-amz-target" in lowered:
        action, protocol = lowered["x-amz-target"].rsplit(".", 1)[-1], "json"
    elif lowered.get("smithy-protocol") == "rpc-v2-cbor" and _RPC_V2_PATH.search(path):
        action, protocol = _RPC_V2_PATH.search(path).group(1), "smithy-rpc-v2-cbor"
    elif (action := _query_action(query, lowered, body)) is not None:
        protocol = "ec2" if service == "ec2" else "query"
    else:
        protocol = _protocol_of(service) or ("rest-json" if "json" in lowered.get("content-type", "") else "rest-xml")
        action = _rest_operation(service, method, path, query, lowered) or f"{method} {path}"
    return AwsRequest(service, action, protocol, method, path, query, lowered, body)


def _query_action(query: str, headers: dict[str, str], body: bytes) -> Optional[str]:
    action = dict(urllib.parse.parse_qsl(query)).get("Action")
    if action is None and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        action = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"))).get("Action")
    return action


@functools.lru_cache(maxsize=None)
def _service_model(signing_name: str):
    session = botocore.session.get_session()
    for name in (_SERVICE_OF_SIGNING_NAME.get(signing_name), signing_name):
        if name:
            try:
                return session.get_service_model(name)
            except Exception:
                continue
    return None


def _protocol_of(service: str) -> Optional[str]:
    model = _service_model(service) if service else None
    return model.protocol if model is not None else None


@dataclass(frozen=True)
class _Route:
    """How a REST operation is called: what a request must have to be one."""

    name: str
    method: str
    path: re.Pattern
    #: Query keys it must carry (with the value, when its URI fixes one) and headers it must carry.
    query: dict[str, Optional[str]]
    headers: frozenset[str]
    #: Characters of its URI that are not labels: a longer literal fits more closely.
    literal: int

    def fits(self, method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> bool:
        return (
            self.method == method
            and self.path.match(path) is not None
            and all(key in query and value in (None, query[key]) for key, value in self.query.items())
            and all(header in headers for header in self.headers)
        )


@functools.lru_cache(maxsize=None)
def _rest_routes(service: str) -> tuple[_Route, ...]:
    """Every operation of ``service``, from botocore's model: its method, URI, required query keys and headers."""
    model = _service_model(service)
    routes = []
    for name in model.operation_names if model is not None else ():
        operation = model.operation_model(name)
        uri_path, _, uri_query = operation.http.get("requestUri", "/").partition("?")
        parts = re.split(r"(\{[^}]+\})", uri_path)  # literal, {label}, literal, {greedy+}, …
        pattern = "".join(_label_pattern(part) if part.startswith("{") else re.escape(part) for part in parts)
        query = {key: (value or None) for key, value in urllib.parse.parse_qsl(uri_query, keep_blank_values=True)}
        headers = set()
        shape = operation.input_shape
        for member in shape.required_members if shape is not None else ():
            wire = shape.members[member].serialization
            if wire.get("location") == "querystring":
                query.setdefault(wire.get("name", member), None)
            elif wire.get("location") == "header":
                headers.add(wire.get("name", member).lower())
        literal = sum(len(part) for part in parts if not part.startswith("{"))
        method = operation.http.get("method", "POST")
        routes.append(_Route(name, method, re.compile(f"^{pattern}/?$"), query, frozenset(headers), literal))
    return tuple(routes)


def _label_pattern(label: str) -> str:
    return ".+" if label.endswith("+}") else "[^/]+"


def _rest_operation(service: str, method: str, path: str, query: str, headers: dict[str, str]) -> Optional[str]:
    """The operation of ``service`` that the request fits most closely (most requirements met, longest literal URI).

    Ties go to the shortest name: S3's ``GET /`` is ListBuckets rather than ListDirectoryBuckets.
    """
    given = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    fitting = [route for route in _rest_routes(service) if route.fits(method, path, given, headers)]
    if not fitting:
        return None
    best = max(fitting, key=lambda r: (len(r.query) + len(r.headers), r.literal, -len(r.name), r.name))
    return best.name


# Error answers ------------------------------------------------------------------


def _error_answer(request: AwsRequest, failure: _Failure) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of AWS error ``failure`` as the request's protocol words it."""
    request_id = str(uuid.uuid4())
    code, message = failure.code, failure.message
    ids = [("x-amzn-RequestId", request_id), ("x-amz-request-id", request_id)]
    if request.protocol in ("json", "rest-json"):
        content_type = request.headers.get("content-type", "") if request.protocol == "json" else ""
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [("Content-Type", content_type or "application/json"), ("x-amzn-ErrorType", code)]
        return headers + ids, body
    if request.protocol == "smithy-rpc-v2-cbor":
        headers = [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")]
        return headers + ids, _cbor_text_map({"__type": code, "message": message})
    code_x, message_x, id_x = escape(code), escape(message), escape(request_id)
    if request.protocol == "ec2":
        xml = (
            f"<Response><Errors><Error><Code>{code_x}</Code><Message>{message_x}</Message></Error></Errors>"
            f"<RequestID>{id_x}</RequestID></Response>"
        )
    elif request.service == "s3":
        xml = f"<Error><Code>{code_x}</Code><Message>{message_x}</Message><RequestId>{id_x}</RequestId></Error>"
    else:
        kind = "Receiver" if failure.status >= 500 else "Sender"
        xml = (
            f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code_x}</Code><Message>{message_x}</Message></Error>"
            f"<RequestId>{id_x}</RequestId></ErrorResponse>"
        )
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).encode()
    return [("Content-Type", "text/xml" if request.protocol in ("query", "ec2") else "application/xml")] + ids, body


def _cbor_text_map(values: dict[str, str]) -> bytes:
    """A CBOR map of text to text (all an RPCv2 CBOR error body needs)."""

    def head(major: int, length: int) -> bytes:
        if length < 24:
            return bytes([major << 5 | length])
        for info, size in ((24, 1), (25, 2), (26, 4)):
            if length < 1 << (8 * size):
                return bytes([major << 5 | info]) + length.to_bytes(size, "big")
        raise ValueError("too long")

    def text(value: str) -> bytes:
        encoded = value.encode()
        return head(3, len(encoded)) + encoded

    return head(5, len(values)) + b"".join(text(k) + text(v) for k, v in values.items())


@pytest.fixture
def aws_proxy(aws_endpoint) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of this test's moto (put its ``url`` in an ``AwsAccount``'s ``endpoint_url``)."""
    with FaultProxy(aws_endpoint) as proxy:
        yield proxy
