"""Extension API servers: routes registered through the API, proxied by every replica, auth checked first.

The extension's API server is a real HTTP server in a thread that echoes
what it got, answers errors, streams, sleeps and records every request;
the API apps run over a real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
import wsgiref.simple_server
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from falcon import testing

from api import proxy
from api.app import create_app
from api.settings import Settings, hash_token
from cli.local_servers import free_port

TOKEN = "extension-proxy-test-token"
REFRESH_SECONDS = 0.3


class _Upstream(BaseHTTPRequestHandler):
    """An extension's API server: echoes as JSON; ``…/teapot`` is a 418, ``…/slow`` sleeps, ``…/stream`` streams."""

    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path, _, query = self.path.partition("?")
        seen = {"method": self.command, "path": path, "query": query, "headers": dict(self.headers.items())}
        seen["body"] = body.decode()
        self.server.seen.append(seen)
        if path.endswith("/teapot"):
            self._answer(418, {"error": "I'm a teapot", "detail": "short and stout"}, [("X-Teapot", "yes")])
        elif path.endswith("/slow"):
            time.sleep(1.5)
            self._answer(200, {"late": True})
        elif path.endswith("/stream"):
            self._stream()
        else:
            self._answer(200, seen, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Connection", "keep-alive")])

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def _answer(self, status: int, body: dict, headers=()) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk, wait in ((b"first\n", True), (b"second\n", False)):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            if wait:  # the rest comes only once the client has the first part
                self.server.release.wait(10)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (the proxy after a timeout) is expected here


@pytest.fixture
def upstream():
    server = _QuietServer(("127.0.0.1", 0), _Upstream)
    server.seen, server.release = [], threading.Event()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_client(database, monkeypatch):
    """An API replica over the test's database (each its own app, so its own route cache)."""
    monkeypatch.setattr(proxy, "REFRESH_SECONDS", REFRESH_SECONDS)

    def make(token: str | None = TOKEN) -> testing.TestClient:
        app = create_app(Settings(token_hashes=frozenset({hash_token(TOKEN)})))
        return testing.TestClient(app, headers={"Authorization": f"Bearer {token}"} if token else {})

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def register(client, upstream_url: str, prefix="/acmecorp.com/v1/", extension="acmecorp.com", **fields):
    body = {"extension": extension, "prefix": prefix, "upstream": upstream_url, **fields}
    return client.simulate_post("/v0/extension-api-routes", json=body)


@contextlib.contextmanager
def served(app):
    """``app`` behind a real HTTP server (to see an answer arrive in parts)."""

    class Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
        daemon_threads = True

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = wsgiref.simple_server.make_server("127.0.0.1", free_port(), app, server_class=Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_registered_route_is_proxied_at_once_with_method_path_query_headers_and_body(client, upstream):
    # Given a route registered through the API
    created = register(client, upstream.url)
    assert created.status_code == 201
    assert created.json["timeout_seconds"] == 30 and created.json["prefix"] == "/acmecorp.com/v1/"

    # When a client posts under its prefix, with a query, its own headers, and a principal of its own making
    result = client.simulate_post(
        "/acmecorp.com/v1/fancy-workloads/",
        query_string="limit=5&name=a%20b",
        json={"name": "fancy"},
        headers={"X-Custom": "yes", "X-Threeport-Principal": "admin", "X-Forwarded-For": "10.1.2.3"},
    )

    # Then the extension's server got the request as sent, at once
    assert result.status_code == 200
    seen = result.json
    assert (seen["method"], seen["path"]) == ("POST", "/acmecorp.com/v1/fancy-workloads/")
    assert seen["query"] == "limit=5&name=a%20b"
    assert json.loads(seen["body"]) == {"name": "fancy"}
    headers = {name.lower(): value for name, value in seen["headers"].items()}
    assert headers["x-custom"] == "yes" and headers["content-type"] == "application/json"
    # But not the client's token, nor its claimed principal: the core says who was let in
    assert "authorization" not in headers
    assert headers["x-threeport-principal"] == f"token:{hash_token(TOKEN)[:16]}"
    assert headers["x-forwarded-for"] == "10.1.2.3, 127.0.0.1" and headers["x-forwarded-proto"] == "http"
    assert headers["x-request-id"] == result.headers["x-request-id"]
    # And the answer's headers come back, repeated ones kept, hop-by-hop ones dropped
    assert result.headers["content-type"] == "application/json"
    assert sorted(cookie.value for cookie in result.cookies.values()) == ["1", "2"]
    assert "connection" not in {name.lower() for name in result.headers}

    # And every other method is forwarded too
    for method in ("GET", "PUT", "PATCH", "DELETE", "HEAD"):
        body = {"json": {}} if method in ("PUT", "PATCH") else {}
        answer = client.simulate_request(method, "/acmecorp.com/v1/fancy-workloads/1", **body)
        assert answer.status_code == 200
        assert upstream.seen[-1]["method"] == method
    assert answer.content == b""  # HEAD


def test_error_statuses_and_bodies_are_relayed_as_they_are(client, upstream):
    # Given a route to a server that answers 418 with a JSON body of its own
    register(client, upstream.url)

    # When a client calls it
    result = client.simulate_get("/acmecorp.com/v1/teapot")

    # Then the client gets that status, body and header, not a problem of the core's making
    assert result.status_code == 418
    assert result.headers["content-type"] == "application/json"
    assert result.json == {"error": "I'm a teapot", "detail": "short and stout"}
    assert result.headers["x-teapot"] == "yes"


def test_a_streamed_answer_reaches_the_client_part_by_part(make_client, upstream):
    # Given a route, and the API served for real
    client = make_client()
    register(client, upstream.url)
    with served(client.app) as api:
        # When a client asks for an answer the extension streams
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.stream("GET", f"{api}/acmecorp.com/v1/stream", headers=headers, timeout=10) as response:
            parts = response.iter_raw()

            # Then the first part arrives while the extension still holds back the rest
            assert response.status_code == 200
            assert next(parts) == b"first\n"
            assert not upstream.release.is_set()
            upstream.release.set()
            assert b"".join(parts) == b"second\n"


def test_without_a_valid_token_the_core_answers_401_and_the_extension_sees_nothing(make_client, upstream):
    # Given a route
    register(make_client(), upstream.url)

    # When clients without a token, or with a wrong one, call under its prefix
    for client in (make_client(token=None), make_client(token="not-the-token")):
        result = client.simulate_post("/acmecorp.com/v1/fancy-workloads", json={"name": "x"})

        # Then the core refuses them with a problem, and nothing reaches the extension
        assert result.status_code == 401
        assert result.headers["content-type"] == "application/problem+json"
    assert upstream.seen == []


def test_routes_that_clash_with_the_core_or_another_extension_or_are_malformed_are_refused(client, upstream):
    # Given acmecorp.com owns its whole namespace
    assert register(client, upstream.url, prefix="/acmecorp.com/").status_code == 201

    # When routes are registered that clash with it or with the core, then they are refused with 409
    clashing = [
        ("acmecorp.com", "/acmecorp.com/"),  # the same prefix again
        ("fancy.com", "/acmecorp.com/v1/"),  # inside another extension's prefix
        ("acmecorp.com", "/v0/"),  # the core's objects
        ("openapi.json", "/openapi.json/v1/"),  # the core's document
    ]
    for extension, prefix in clashing:
        result = register(client, upstream.url, prefix=prefix, extension=extension)
        assert result.status_code == 409, (extension, prefix)
        assert result.headers["content-type"] == "application/problem+json"

    # And malformed ones with 422
    malformed = [
        {"extension": "fancy.com", "prefix": "/other.com/v1/"},  # not under its own domain
        {"extension": "Fancy", "prefix": "/Fancy/v1/"},  # not a domain
        {"extension": "fancy.com", "prefix": "/fancy.com/v1"},  # no trailing slash
        {"extension": "fancy.com", "prefix": "/fancy.com/../v0/"},
        {"extension": "fancy.com", "prefix": "/fancy.com/v1/", "upstream": "ftp://fancy:21"},
        {"extension": "fancy.com", "prefix": "/fancy.com/v1/", "upstream": "http://user:pw@fancy"},
        {"extension": "fancy.com", "prefix": "/fancy.com/v1/", "timeout_seconds": 0},
    ]
    for fields in malformed:
        result = register(client, fields.pop("upstream", upstream.url), **fields)
        assert result.status_code == 422, fields
    # And only the first route exists
    listed = client.simulate_get("/v0/extension-api-routes").json["items"]
    assert [route["prefix"] for route in listed] == ["/acmecorp.com/"]


def test_the_longest_prefix_wins(client, upstream):
    # Given an extension's namespace served by a server that is down, but for one prefix inside it
    down = f"http://127.0.0.1:{free_port()}"
    register(client, down, prefix="/acmecorp.com/")
    register(client, upstream.url, prefix="/acmecorp.com/v1/reports/")

    # Then a path under the longer prefix reaches the live server, any other the dead one
    assert client.simulate_get("/acmecorp.com/v1/reports").json["path"] == "/acmecorp.com/v1/reports"
    assert client.simulate_get("/acmecorp.com/v1/other").status_code == 502


def test_a_down_extension_is_a_502_and_a_slow_one_a_504_both_naming_it(client, upstream):
    # Given a route to a port nothing listens on, and one to a server slower than its timeout
    register(client, f"http://127.0.0.1:{free_port()}", prefix="/down.example.com/", extension="down.example.com")
    register(client, upstream.url, prefix="/slow.example.com/", extension="slow.example.com", timeout_seconds=1)

    # When each is called, then the core answers with a problem naming the extension
    down = client.simulate_get("/down.example.com/v1/things")
    assert down.status_code == 502 and down.headers["content-type"] == "application/problem+json"
    assert "'down.example.com'" in down.json["detail"]
    started = time.monotonic()
    slow = client.simulate_get("/slow.example.com/v1/slow")
    assert slow.status_code == 504 and slow.headers["content-type"] == "application/problem+json"
    assert "'slow.example.com'" in slow.json["detail"] and "1 s" in slow.json["detail"]
    assert time.monotonic() - started < 1.4  # it did not wait for the 1.5 s answer


def test_paths_without_a_route_keep_their_404(client, upstream):
    register(client, upstream.url)

    for path in ("/v0/nothing", "/fancy.com/v1/things", "/acmecorp.com/v2/things"):
        result = client.simulate_get(path)
        assert result.status_code == 404, path
        assert result.headers["content-type"] == "application/problem+json"
    # And a path that climbs out of a prefix is refused before any route is looked up
    climbing = client.simulate_get("/acmecorp.com/v1/../../v0/workload-definitions")
    assert climbing.status_code == 400 and climbing.headers["content-type"] == "application/problem+json"
    assert upstream.seen == []


def test_another_replica_serves_a_new_route_at_once_and_drops_a_deleted_one_within_the_refresh_interval(
    make_client, upstream
):
    # Given two replicas of the API on one database, the second one already serving (its table cached)
    first, second = make_client(), make_client()
    assert second.simulate_get("/acmecorp.com/v1/things").status_code == 404

    # When a route is registered through the first
    route = register(first, upstream.url).json

    # Then the second serves it at once, without a restart
    assert second.simulate_get("/acmecorp.com/v1/things").json["path"] == "/acmecorp.com/v1/things"

    # When the route is deleted through the first
    assert first.simulate_delete(f"/v0/extension-api-routes/{route['id']}").status_code == 204
    assert first.simulate_get(f"/v0/extension-api-routes/{route['id']}").status_code == 404

    # Then the second stops serving it within its refresh interval
    deleted_at = time.monotonic()
    while second.simulate_get("/acmecorp.com/v1/things").status_code != 404:
        assert time.monotonic() - deleted_at < REFRESH_SECONDS + 1, "the deleted route is still served"
        time.sleep(0.05)
    assert first.simulate_get("/acmecorp.com/v1/things").status_code == 404
