"""The API's shell: probes, auth, and every bad-input class answered with a problem+json 4xx."""

from __future__ import annotations

import pytest
from falcon import testing

from api.app import create_app
from api.checks import nats_check
from api.settings import Settings, hash_token
from cli.local_servers import free_port
from workers.connection import Connection

TOKEN = "s3cret-token-for-tests"


class Echo:
    """A test-only resource that reads its JSON body, or fails on request."""

    def on_post(self, req, resp):
        resp.media = {"got": req.get_media()}

    def on_get(self, req, resp):
        raise RuntimeError("boom: internal detail that must not leak")


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
        "/echo", body=body, headers={"Content-Type": "application/json"}, extras={"CONTENT_LENGTH": ""}
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
