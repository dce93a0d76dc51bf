"""``threeport api`` under real gunicorn: it serves, checks NATS, and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
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
    finally:
        # When it gets SIGTERM, then it exits cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    # And the requests were logged only with --access-log
    assert ('"GET /readyz HTTP/1.1" 200' in (tmp_path / "stdout").read_text()) is access_log
