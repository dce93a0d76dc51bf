"""``threeport up``: run the whole control plane on this machine.

It starts what is missing: an embedded ``nats-server -js`` and PostgreSQL
with their data under ``THREEPORT_HOME`` (default ``./.threeport``), so a
second run reuses them; with ``NATS_URL`` / ``DATABASE_URL`` set it uses those
instead. Then it migrates, starts the API under gunicorn and the worker
processes, prints where the API listens and its token, and runs until Ctrl-C
or SIGTERM, when it stops every process it started, newest first. Should
one of them stop by itself (the API, the workers, or an embedded server), it
says which, stops the rest and exits with 1.

The API and workers get the secret-field encryption key from
``THREEPORT_ENCRYPTION_KEY``, or one generated on the first run and kept
(mode 0600) under ``THREEPORT_HOME``. The control plane is registered in the
client config (:mod:`cli.config`) as ``local`` and made current, so the
client verbs (``threeport get``, ``apply``, ...) talk to it at once.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from models import StoreError, database_from_url, migrate
from models.secrets import ENV_VAR as ENCRYPTION_KEY_VAR
from models.secrets import generate_key
from workers.logs import configure_from_env as configure_logging
from workers.replicas import ENV_VAR as REPLICAS_ENV
from workers.tracing import configure_from_env as configure_tracing

from . import config as client_config
from .local_servers import NatsServer, PostgresServer, ServerError

DEFAULT_NATS_PORT = 4222
DEFAULT_POSTGRES_PORT = 25432
DEFAULT_API_PORT = 1323
CONFIG_FILE = "config.json"
ENCRYPTION_KEY_FILE = "encryption.key"
#: The name ``up`` registers its control plane under in the client config.
CONTROL_PLANE_NAME = "local"

console = Console()


def _home(home: Path) -> Path:
    """``--home``: a directory, or where one may be made (an empty THREEPORT_HOME would be the current one)."""
    if not str(home).strip() or str(home) == ".":
        raise typer.BadParameter("give a directory of its own for the local data, such as .threeport")
    if home.exists() and not home.is_dir():
        raise typer.BadParameter(f"{home} is a file, not a directory")
    return home


def up(
    home: Path = typer.Option(
        Path(".threeport"), envvar="THREEPORT_HOME", callback=_home, help="Where local data lives."
    ),
    nats_port: int = typer.Option(
        DEFAULT_NATS_PORT, envvar="THREEPORT_NATS_PORT", min=1, max=65535, help="Embedded NATS port."
    ),
    postgres_port: int = typer.Option(
        DEFAULT_POSTGRES_PORT, envvar="THREEPORT_POSTGRES_PORT", min=1, max=65535, help="Embedded PostgreSQL port."
    ),
    api_port: int = typer.Option(DEFAULT_API_PORT, envvar="THREEPORT_API_PORT", min=1, max=65535, help="API port."),
    worker_processes: int = typer.Option(1, envvar="THREEPORT_WORKER_PROCESSES", min=1, help="Worker processes."),
    worker_threads: int = typer.Option(8, envvar="THREEPORT_WORKER_THREADS", min=1, help="Threads per worker process."),
) -> None:
    """Start the control plane locally and run until Ctrl-C."""
    configure_logging()  # the API and worker processes it starts set up their own
    configure_tracing("threeport-up")  # says at once whether spans go out, or that the tracing extra is missing
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    # A signal handler only appends to a list: taking a lock there (Event.set)
    # can deadlock with the main thread it interrupts.
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    with ExitStack() as running:
        servers: list[tuple[str, NatsServer | PostgresServer]] = []  # the embedded ones, watched like the children
        try:
            nats_url = _nats(home, nats_port, running, servers)
            database_url = _database(home, postgres_port, running, servers)
        except (ServerError, StoreError) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
        token = _token(home)
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "DATABASE_URL": database_url,
            "THREEPORT_API_TOKEN": token,
            ENCRYPTION_KEY_VAR: _encryption_key(home),
        }
        if not os.environ.get("NATS_URL"):
            env[REPLICAS_ENV] = "1"  # the embedded server holds one replica of each stream
        api_url = f"http://127.0.0.1:{api_port}"
        children = [_spawn(["api", "--host", "127.0.0.1", "--port", str(api_port)], env, running)]
        if _has_command("worker"):
            children.append(
                _spawn(["worker", "--processes", str(worker_processes), "--threads", str(worker_threads)], env, running)
            )
        _save_config(home, api_url=api_url, token=token)
        if not _wait_for(f"{api_url}/healthz", signals, children):
            console.print("[red]error:[/] the API did not come up; see the output above")
            raise typer.Exit(1)
        _register(api_url=api_url, token=token)
        console.print(f"API listening on [bold]{api_url}[/]  token: [bold]{token}[/]")
        console.print(f"Client config saved to {home / CONFIG_FILE}. Press Ctrl-C to stop.")
        while not signals:
            time.sleep(0.2)
            dead = [c for c in children if c.poll() is not None]
            if dead:
                code = dead[0].returncode
                how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
                console.print(f"[red]error:[/] 'threeport {dead[0].args[3]}' {how}; its output is above. Stopping…")
                raise typer.Exit(1)
            gone = [(name, server) for name, server in servers if not server.running]
            if gone:
                name, server = gone[0]
                console.print(f"[red]error:[/] the embedded {name} stopped; its log is {server.log_path}. Stopping…")
                raise typer.Exit(1)
        console.print("Stopping…")
    console.print("Stopped.")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _nats(home: Path, port: int, running: ExitStack, servers: list) -> str:
    if os.environ.get("NATS_URL"):
        console.print(f"Using NATS at [bold]{os.environ['NATS_URL']}[/] (NATS_URL).")
        return os.environ["NATS_URL"]
    server = NatsServer(store_dir=home / "nats", port=port, name="threeport").start()
    running.callback(server.stop)
    servers.append(("NATS server", server))
    console.print(f"NATS JetStream on {server.url} (data in {server.store_dir}).")
    return server.url


def _database(home: Path, port: int, running: ExitStack, servers: list) -> str:
    if os.environ.get("DATABASE_URL"):
        url = os.environ["DATABASE_URL"]
        console.print("Using the database at DATABASE_URL.")
    else:
        server = PostgresServer(base_dir=home / "postgres", port=port).start()
        running.callback(server.stop)
        servers.append(("PostgreSQL", server))
        url = server.create_database("threeport")
        console.print(f"PostgreSQL on 127.0.0.1:{port} (data in {server.data_dir}).")
    database = database_from_url(url)
    try:
        applied = migrate(database)
    finally:
        database.close_all()
    if applied:
        console.print(f"Migrated: {', '.join(applied)}.")
    return url


def _token(home: Path) -> str:
    """THREEPORT_API_TOKEN, else the one saved by an earlier run, else a new one."""
    if os.environ.get("THREEPORT_API_TOKEN"):
        return os.environ["THREEPORT_API_TOKEN"]
    saved = _load_config(home).get("token")
    return saved or secrets.token_urlsafe(32)


def _load_config(home: Path) -> dict:
    try:
        return json.loads((home / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _save_config(home: Path, *, api_url: str, token: str) -> None:
    path = home / CONFIG_FILE
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps({"api_url": api_url, "token": token}, indent=2) + "\n")


def _encryption_key(home: Path) -> str:
    """THREEPORT_ENCRYPTION_KEY, else the key an earlier run saved, else a new one, saved with mode 0600.

    A saved key is never replaced: the secrets stored with it could no longer be read.
    """
    if os.environ.get(ENCRYPTION_KEY_VAR):
        return os.environ[ENCRYPTION_KEY_VAR]
    path = home / ENCRYPTION_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    key = generate_key()
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(key + "\n")
    console.print(f"Generated the secret-field encryption key in {path} (keep it: secrets need it).")
    return key


def _register(*, api_url: str, token: str) -> None:
    """Make this control plane the client config's current one, as ``local``."""
    path = client_config.config_path()
    try:
        config = client_config.load(path)
        plane = client_config.ControlPlane(name=CONTROL_PLANE_NAME, api_url=api_url, token=token)
        config.add(plane, use=True)
        client_config.save(config, path)
    except client_config.ConfigError as exc:
        console.print(f"[yellow]warning:[/] the client config was not updated: {exc}")
        return
    console.print(f"Client config: control plane {CONTROL_PLANE_NAME!r} (current) in {path}.")


def _has_command(name: str) -> bool:
    from .main import app

    return any(c.name == name for c in app.registered_commands)


def _spawn(args: list[str], env: dict, running: ExitStack) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *args], env=env, cwd=_project_root())
    running.callback(_stop_process, proc)
    return proc


def _stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(url: str, signals: list[int], children: list[subprocess.Popen], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not signals:
        if any(c.poll() is not None for c in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.2)
    return False


def _project_root() -> Optional[str]:
    root = Path(__file__).resolve().parent.parent
    return str(root) if (root / "cli").is_dir() else None
