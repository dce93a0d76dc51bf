"""Worker heartbeats on a real nats-server: ``threeport workers``, expiry of killed workers, the worker's probes."""

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
from dramatiq import Worker
from typer.testing import CliRunner

from cli.local_servers import free_port
from cli.main import app
from workers import bridge
from workers.heartbeats import Heartbeats, bucket_name
from workers.metrics import start_metrics_server

from .conftest import nats_call
from .reconciling import wait_for

ROOT = Path(__file__).resolve().parent.parent
#: Seconds between heartbeats in these tests; an entry then lives 5 s without a newer one.
INTERVAL = 1.5


@pytest.fixture
def heartbeat_bucket(broker, prefix):
    """The test's heartbeat bucket, deleted afterwards (its stream is not under the prefix)."""
    yield bucket_name(prefix)
    nats_call(broker, lambda js: js.delete_key_value(bucket_name(prefix)))


@pytest.fixture
def listed(nats_server, prefix):
    """``threeport workers -o json`` under the test's prefix: the workers it lists, by pid."""
    runner = CliRunner()

    def run() -> dict[int, dict]:
        result = runner.invoke(
            app, ["workers", "-o", "json"], env={"NATS_URL": nats_server.url, "THREEPORT_PREFIX": prefix}
        )
        assert result.exit_code == 0, result.output
        return {entry["pid"]: entry for entry in json.loads(result.stdout)}

    return run


@pytest.fixture
def start_worker(database, empty_database_url, nats_server, prefix):
    """Start ``threeport worker`` processes with one-second heartbeats; none is left behind."""
    procs: list[subprocess.Popen] = []

    def start(*options: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--threads", "2", *options],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": empty_database_url,
                "NATS_URL": nats_server.url,
                "THREEPORT_PREFIX": prefix,
                "THREEPORT_HEARTBEAT_INTERVAL": str(INTERVAL),
            },
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_workers_lists_worker_processes_until_they_stop_or_their_heartbeat_expires(
    start_worker, listed, heartbeat_bucket
):
    # Given `threeport worker` with two processes on two queues, serving probes
    port = free_port()
    group = start_worker("--processes", "2", "--queues", "aws", "--queues", "workloads", "--metrics-port", str(port))
    assert group.stdout.readline().startswith("worker ready") and group.stdout.readline().startswith("worker ready")

    # When `threeport workers` lists the deployment's workers
    def both_ready() -> dict[int, dict] | None:
        found = listed()
        return found if len(found) == 2 and all(w["ready"] for w in found.values()) else None

    workers = wait_for(both_ready)

    # Then each process is there with its pid, its queues, nothing in flight and a fresh heartbeat
    killed, stopped = sorted(workers)
    assert group.pid not in workers  # the parent consumes nothing itself
    for entry in workers.values():
        assert entry["queues"] == ["aws", "workloads"] and entry["in_flight"] == 0 and entry["state"] == "running"
        assert entry["age_seconds"] < 2 * INTERVAL and entry["id"].endswith(f"-{entry['pid']}")
    # And the parent answers the probes for its processes
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    status, ready = get(f"http://127.0.0.1:{port}/readyz")
    assert status == 200 and sorted(ready["processes"]) == [killed, stopped]

    # When one process is killed with SIGKILL
    os.kill(killed, signal.SIGKILL)
    killed_at = time.monotonic()

    # Then it is still listed (its heartbeat has not expired yet)
    assert killed in listed()

    # When the parent, seeing it die, stops the other one gracefully and exits
    assert group.wait(30) == 1

    # Then the stopped process is gone at once (it wrote heartbeats until it stopped: only its own deletion removes it)
    assert stopped not in listed()
    # And the killed one is gone once its heartbeat's TTL, three intervals, has passed
    wait_for(lambda: not listed(), timeout=3 * INTERVAL + 5)
    assert time.monotonic() - killed_at >= 2 * INTERVAL


def test_readyz_fails_while_the_consumers_cannot_pull_and_healthz_holds(broker, heartbeat_bucket):
    # Given a worker with heartbeats, whose probes are served over HTTP, and whose pulls may stall 1 s
    broker.declare_queue("probed")
    heartbeats = Heartbeats(interval=0.5, ready_within=1.0)
    broker.add_middleware(heartbeats)
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    port = free_port()
    server = start_metrics_server(
        port, "127.0.0.1", probes={"/healthz": heartbeats.liveness, "/readyz": heartbeats.readiness}
    )
    try:
        # And it is ready while it consumes
        wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200)

        # When the NATS loop thread is stuck for 2.5 s, so no pull comes round
        bridge.get_loop().loop.call_soon_threadsafe(time.sleep, 2.5)

        # Then /readyz turns 503 and says which queue stalled, while /healthz stays 200
        def not_ready() -> dict | None:
            status, body = get(f"http://127.0.0.1:{port}/readyz")
            return body if status == 503 else None

        body = wait_for(not_ready)
        assert any(problem.startswith("probed: no pull for") for problem in body["problems"])
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        # And once the loop moves again, it is ready again
        wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        worker.stop()


def test_workers_of_a_prefix_nats_cannot_hold_is_one_line_saying_so(nats_server):
    # When I list the workers under a prefix with a wildcard in it
    result = CliRunner().invoke(app, ["workers", "--nats-url", nats_server.url, "--prefix", "x*"])

    # Then one line says what a prefix may hold (it used to ask NATS for a bucket named 'x*_workers')
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: invalid prefix 'x*': use letters, digits, '_' and '-'"]
