"""AWS for the tests: moto in server mode, real HTTP on loopback, started once per session.

``moto_server`` is the server (``ThreadedMotoServer`` in this process: every
client, the workers' subprocesses included, reaches it over HTTP at its
URL); ``aws_endpoint`` resets its state for each test and gives its URL, to
put in an ``AwsAccount``'s ``endpoint_url``. moto accepts any credentials.
``start_worker`` starts real worker processes on the ``aws`` queue, for the
tests that kill one mid-build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
from moto.server import ThreadedMotoServer

from cli.local_servers import free_port, wait_for_port

from .postgres import ENCRYPTION_KEY

__all__ = ["moto_server", "aws_endpoint", "start_worker", "ACCOUNT_ID", "ACCESS_KEYS"]

#: The account id moto answers GetCallerIdentity with.
ACCOUNT_ID = "123456789012"
#: Keys for an AwsAccount on moto (any keys do).
ACCESS_KEYS = {"access_key_id": "AKIAMOTOEXAMPLE", "secret_access_key": "moto-secret-key"}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    wait_for_port(port, timeout=10)
    yield url
    server.stop()


@pytest.fixture
def aws_endpoint(moto_server) -> str:
    """The moto server's URL, its state emptied for this test."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    return moto_server


#: ``threeport worker`` on the ``aws`` queue, with test timings (tests/helpers/quick_worker.py).
AWS_WORKER = [
    sys.executable,
    "-m",
    "tests.helpers.quick_worker",
    "--processes",
    "1",
    "--threads",
    "2",
    "--queues",
    "aws",
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def start_worker(database, empty_database_url, nats_server, prefix):
    """Start worker processes (``aws`` queue) on this test's database and streams; each is stopped at the end."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        env = {
            **os.environ,
            "DATABASE_URL": empty_database_url,
            "NATS_URL": nats_server.url,
            "THREEPORT_PREFIX": prefix,
            "THREEPORT_ENCRYPTION_KEY": ENCRYPTION_KEY,
        }
        proc = subprocess.Popen(AWS_WORKER, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("worker ready"), f"the worker did not start: {line!r}"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
