"""The API's shell: probes, auth, and every bad-input class answered with a problem+json 4xx."""

from __future__ import annotations

import socket

import pytest
from falcon import testing

from api.app import create_app
from api.checks import nats_check
from api.settings import Settings, hash_token
from cli.local_servers import free_port
from workers.connection import Connection

from .live_api import served

TOKEN = "s3cret-token-for-tests"


class Echo:
    """A test-only resource that reads its JSON body, or fails on request."""

    def on_post(self, req, resp):
        resp.media = {"got": req.get_media()}

    def on_get(self, req, resp):
        raise RuntimeError("boom: internal detail that must not leak")

    def on_patch(self, req, resp):
        resp.media = {"got": req.get_media()}

    def on_delete(self, req, resp):
        resp.media = {"got": req.get_media()}


@pytest.fixture
def client():
    ready = {"state": None}

    def database():
        if ready["state"]:
            raise ConnectionError(ready["state"])

    settings = Settings(token_hashes=frozenset({hash_token(TOKEN)}), max_body_bytes=1024)
    app = create_app(settings, checks={"database": database})
    app.add_route("/echo", Echo())
    client = testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    client.ready = ready
    return client


def test_probes_answer_without_a_token(client):
    # Given no Authorization header, when probing, then both probes answer
    assert client.simulate_get("/healthz", headers={"Authorization": ""}).json == {"status": "ok"}
    ready = client.simulate_get("/readyz", headers={"Authorization": ""})
    assert ready.status_code == 200 and ready.json["checks"] == {"database": "ok"}


def test_readyz_names_the_failing_dependency(client):
    # Given a database check that fails
    client.ready["state"] = "connection refused"

    # Then /readyz answers 503 and says which check failed and why
    result = client.simulate_get("/readyz")
    assert result.status_code == 503
    assert result.headers["content-type"] == "application/problem+json"
    assert "database: ConnectionError: connection refused" in result.json["detail"]


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer wrong-token", "Basic " + TOKEN, TOKEN],
)
def test_requests_without_a_valid_bearer_token_get_401(client, authorization):
    result = client.simulate_post("/echo", json={"a": 1}, headers={"Authorization": authorization})
    assert result.status_code == 401
    assert result.headers["www-authenticate"] == "Bearer"
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["status"] == 401


def test_a_valid_token_passes_and_the_request_id_is_echoed(client):
    result = client.simulate_post("/echo", json={"a": 1}, headers={"X-Request-Id": "req-42"})
    assert result.status_code == 200 and result.json == {"got": {"a": 1}}
    assert result.headers["x-request-id"] == "req-42"


def test_malformed_json_is_a_400_problem(client):
    result = client.simulate_post("/echo", body=b'{"a": ', headers={"Content-Type": "application/json"})
    assert result.status_code == 400
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["title"]


def test_a_body_that_is_not_json_is_a_415_problem(client):
    result = client.simulate_post("/echo", body=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert result.status_code == 415
    assert "application/json" in result.json["detail"]


def post_without_length(client, body: bytes):
    """A body sent with no Content-Length (as chunked transfer arrives in WSGI)."""
    return client.simulate_post(
        "/echo",
        body=body,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        extras={"CONTENT_LENGTH": ""},
    )


def test_a_body_over_the_limit_is_a_413_problem(client):
    # Given a limit of 1024 bytes, when 2 KiB are posted, with or without a Content-Length
    declared = client.simulate_post("/echo", json={"x": "y" * 2048})
    undeclared = post_without_length(client, b'{"x": "' + b"y" * 2048 + b'"}')

    # Then both are refused with 413
    assert declared.status_code == 413
    assert undeclared.status_code == 413
    assert declared.json["status"] == 413


def test_a_body_without_length_under_the_limit_is_read_whole(client):
    result = post_without_length(client, b'{"x": "' + b"y" * 900 + b'"}')
    assert result.status_code == 200
    assert result.json == {"got": {"x": "y" * 900}}


def test_an_unexpected_error_is_a_500_problem_without_a_traceback(client):
    result = client.simulate_get("/echo", headers={"X-Request-Id": "req-500"})
    assert result.status_code == 500
    assert result.headers["content-type"] == "application/problem+json"
    assert "boom" not in result.text and "Traceback" not in result.text
    assert "req-500" in result.json["detail"]


def test_unknown_routes_are_404_problems(client):
    result = client.simulate_get("/nope")
    assert result.status_code == 404
    assert result.json["status"] == 404
    assert result.json["detail"] == "Nothing is served at /nope."


def test_a_method_a_route_does_not_serve_is_a_405_problem_naming_the_allowed_ones(client):
    result = client.simulate_post("/healthz")
    assert result.status_code == 405
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["detail"].startswith("POST is not allowed on /healthz; allowed: ")
    assert "GET" in result.json["detail"]


def post_json_text(client, text: str, *, method: str = "POST", content_type: str = "application/json"):
    return client.simulate_request(method, "/echo", body=text.encode(), headers={"Content-Type": content_type})


@pytest.mark.parametrize(
    "text, where, what",
    [
        ('{"name": "a\\u0000b"}', "name", "NUL"),
        ('{"spec": {"items": ["ok", "x\\u0000"]}}', "spec.items[1]", "NUL"),
        ('{"name": "\\ud800"}', "name", "surrogate"),
        ('{"a\\u0000": 1}', "the key 'a\\x00'", "NUL"),
        ('"\\udfff"', "the body", "surrogate"),
        ('{"n": 1e400}', "n", "too large"),
    ],
)
def test_json_the_database_cannot_store_is_a_422_naming_where(client, text, where, what):
    # Given valid JSON with a string PostgreSQL refuses (or a number no answer could carry back)
    result = post_json_text(client, text)

    # Then it is refused before anything reads it, saying where
    assert result.status_code == 422
    assert result.headers["content-type"] == "application/problem+json"
    assert result.json["detail"].startswith(f"{where}: ")
    assert what in result.json["detail"]


@pytest.mark.parametrize("text", ['{"n": NaN}', '{"n": Infinity}', "[-Infinity]"])
def test_what_python_reads_but_is_not_json_is_a_400(client, text):
    result = post_json_text(client, text)
    assert result.status_code == 400
    assert result.json["title"] == "Malformed JSON"
    assert "JSON has no NaN or infinity" in result.json["detail"]


@pytest.mark.parametrize(
    "text, detail",
    [
        ("[" * 100_000 + "]" * 100_000, "The body is nested too deeply to be read."),
        ('{"n": ' + "9" * 5000 + "}", "A number in the body has too many digits to be read."),
    ],
    ids=["nesting", "digits"],
)
def test_a_body_past_what_the_parser_reads_is_a_400(text, detail):
    # Given the default body limit (1 MiB), when a body nests 100,000 arrays or holds a 5,000-digit number
    app = create_app(Settings(token_hashes=frozenset({hash_token(TOKEN)})))
    app.add_route("/echo", Echo())
    client = testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    result = post_json_text(client, text)

    # Then the body is malformed, not a server error, and the answer names no Python internals
    assert result.status_code == 400
    assert (result.json["title"], result.json["detail"]) == ("Malformed JSON", detail)


def test_unicode_that_is_fine_passes_through(client):
    result = post_json_text(client, '{"name": "caf\\u00e9 \\ud83d\\ude00 \u65e5\u672c"}')
    assert result.status_code == 200
    assert result.json == {"got": {"name": "caf\u00e9 \U0001f600 \u65e5\u672c"}}


def test_a_merge_patch_and_a_media_type_in_capitals_are_read_as_json(client):
    patched = post_json_text(client, '{"zone": "Public"}', method="PATCH", content_type="application/merge-patch+json")
    capitals = post_json_text(client, '{"zone": "Public"}', content_type="Application/JSON; charset=utf-8")
    assert patched.status_code == 200 and patched.json == {"got": {"zone": "Public"}}
    assert capitals.status_code == 200 and capitals.json == {"got": {"zone": "Public"}}


def test_a_delete_without_a_body_is_answered_without_waiting_for_one(client):
    # Given the API on a server whose request stream is the socket itself (wsgiref: read past the
    # request, it waits for the client), when a DELETE comes with no Content-Length and no chunks
    with served(client.app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"DELETE /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            answer = sock.recv(65536)

    # Then it is answered at once (the resource wanted a JSON body: there is none, wsgiref calls it text/plain)
    assert answer.startswith(b"HTTP/1.0 415 ")


def test_a_delete_body_is_held_to_the_limit_and_to_json_too(client):
    too_large = post_json_text(client, '{"ids": ["' + "x" * 2048 + '"]}', method="DELETE")
    not_json = post_json_text(client, "ids=1", method="DELETE", content_type="text/plain")
    fine = post_json_text(client, '{"ids": ["a"]}', method="DELETE")
    assert too_large.status_code == 413
    assert not_json.status_code == 415
    assert fine.status_code == 200 and fine.json == {"got": {"ids": ["a"]}}


def test_a_query_value_with_nul_is_a_400_naming_the_parameter(client):
    result = client.simulate_get("/healthz", query_string="name=a%00b")
    assert result.status_code == 400
    assert result.json["detail"] == "query parameter 'name' contains NUL (%00)"


def test_settings_from_env_hash_tokens_and_keep_given_hashes():
    settings = Settings.from_env({"THREEPORT_API_TOKEN": "abc", "THREEPORT_API_TOKEN_HASHES": "DEADBEEF, "})
    assert settings.token_hashes == frozenset({hash_token("abc"), "deadbeef"})
    assert "abc" not in repr(settings)


def test_the_nats_check_passes_on_a_live_server_and_fails_on_a_dead_one(nats_server):
    # Given a check on the session's nats-server and one on a port where nothing listens
    live = Connection([nats_server.url])
    dead = Connection([f"nats://127.0.0.1:{free_port()}"], connect_timeout=1.0)
    try:
        # Then the first passes and the second raises
        nats_check(live)()
        with pytest.raises(Exception, match="cannot connect to NATS"):
            nats_check(dead)()
    finally:
        live.close_sync()
        dead.close_sync()
