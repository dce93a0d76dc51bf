"""AWS for the tests: moto in server mode, real HTTP on loopback, started once per session.

``moto_server`` is the server (``ThreadedMotoServer`` in this process: every
client, the workers' subprocesses included, reaches it over HTTP at its
URL); ``aws_endpoint`` resets its state for each test and gives its URL, to
put in an ``AwsAccount``'s ``endpoint_url``. moto accepts any credentials.
"""

from __future__ import annotations

import urllib.request
from typing import Iterator

import pytest
from moto.server import ThreadedMotoServer

from cli.local_servers import free_port, wait_for_port

__all__ = ["moto_server", "aws_endpoint", "ACCOUNT_ID", "ACCESS_KEYS"]

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
