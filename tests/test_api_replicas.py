"""Two ``threeport api`` processes under real gunicorn on one database: what one registers, the other serves.

No restart, no signal between them: each replica finds a registration it
has not seen in the database (an extension's kinds, an extension API
server's route) on the first request that needs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from cli.local_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "replicas-test-token"


class _Upstream(BaseHTTPRequestHandler):
    """An extension's own API server: answers every GET with the path it was asked for."""

    def do_GET(self) -> None:
        body = json.dumps({"served_by": "gadgets.io", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def start_api(nats_server, database, empty_database_url):
    """Start ``threeport api`` (gunicorn, ``workers`` processes) on the test's database; SIGTERM at the end."""
    procs: list[subprocess.Popen] = []

    def start(workers: int) -> httpx.Client:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": empty_database_url,
            "NATS_URL": nats_server.url,
            "THREEPORT_API_TOKEN": TOKEN,
            "THREEPORT_API_PORT": str(port),
        }
        command = [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--workers", str(workers)]
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"})
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the API never became ready"
            time.sleep(0.1)

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0


def test_a_replica_serves_what_another_registered_without_restart(start_api, upstream):
    # Given two API replicas under gunicorn, the second with two worker processes, both serving already
    first, second = start_api(workers=1), start_api(workers=2)
    assert second.get("/acmecorp.com/v1/fancy-workloads").status_code == 404
    assert second.get("/gadgets.io/v1/gadgets").status_code == 404

    # When the first registers an extension's kinds, and another extension's API server
    schema = {"type": "object", "properties": {"image": {"type": "string"}}, "required": ["image"]}
    kinds = [{"kind": "FancyWorkload", "schema": schema}]
    assert (
        first.post("/v0/extensions", json={"domain": "acmecorp.com", "version": "v1", "kinds": kinds}).status_code
        == 201
    )
    route = {"extension": "gadgets.io", "prefix": "/gadgets.io/v1/", "upstream": upstream}
    assert first.post("/v0/extension-api-routes", json=route).status_code == 201

    # Then every process of the second serves both at once, on every request
    for n in range(6):
        created = second.post("/acmecorp.com/v1/fancy-workloads", json={"name": f"w{n}", "image": "nginx"})
        assert created.status_code == 201, created.text
        proxied = second.get("/gadgets.io/v1/gadgets", params={"n": n})
        assert proxied.status_code == 200 and proxied.json() == {
            "served_by": "gadgets.io",
            "path": f"/gadgets.io/v1/gadgets?n={n}",
        }
    assert len(first.get("/acmecorp.com/v1/fancy-workloads").json()["items"]) == 6
    # And a schema violation is refused there too
    assert second.post("/acmecorp.com/v1/fancy-workloads", json={"name": "x", "image": 7}).status_code == 422
