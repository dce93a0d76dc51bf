"""``threeport api`` under real gunicorn: it serves, checks NATS, and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli.local_servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def get(url: str, token: str = "") -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``request`` as it is; the status line, headers and body of the answer (read to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize("access_log", [False, True], ids=["quiet", "access-log"])
def test_the_api_serves_under_gunicorn_and_stops_on_sigterm(
    nats_server, database, empty_database_url, tmp_path, access_log
):
    # Given `threeport api` started on a free port with a token, a migrated database and the session's NATS
    # (with a line per request on stdout only when asked)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": empty_database_url,
        "NATS_URL": nats_server.url,
        "THREEPORT_API_TOKEN": "tok",
        "THREEPORT_API_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--workers", "1"]
        + (["--access-log"] if access_log else []),
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "stdout").open("wb"),
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "the API never answered"
                time.sleep(0.1)

        # Then the probes answer without a token, and the database and NATS are reported ready
        assert (status, body) == (200, {"status": "ok"})
        ready = {"status": "ready", "checks": {"database": "ok", "nats": "ok"}}
        assert get(f"http://127.0.0.1:{port}/readyz") == (200, ready)
        # And other routes want the token
        assert get(f"http://127.0.0.1:{port}/v0/nothing")[0] == 401
        assert get(f"http://127.0.0.1:{port}/v0/nothing", token="tok")[0] == 404

        # And a request gunicorn cannot read is answered as problem+json too, as is a malformed chunked body
        status, headers, body = raw(port, b"NOT AN HTTP REQUEST\r\n\r\n")
        assert status.startswith("HTTP/1.1 400 ")
        assert headers["content-type"] == "application/problem+json"
        assert json.loads(body)["status"] == 400 and json.loads(body)["detail"]
        chunked = (
            b"POST /v0/workload-definitions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n"
        )
        status, headers, body = raw(port, chunked)
        assert status.startswith("HTTP/1.1 400 ")
        assert json.loads(body)["detail"].startswith("The chunked body could not be read: ")
    finally:
        # When it gets SIGTERM, then it exits cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    # And the requests were logged only with --access-log
    assert ('"GET /readyz HTTP/1.1" 200' in (tmp_path / "stdout").read_text()) is access_log
