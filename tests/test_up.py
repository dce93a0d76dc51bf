"""``threeport up`` end to end: real NATS, PostgreSQL and API processes, stopped cleanly, data kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from cli.local_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


def call(method: str, url: str, token: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {token}"})
    if data:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def status_of(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def home():
    path = Path(tempfile.mkdtemp(prefix="threeport-home-"))
    path.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def client_config(tmp_path) -> Path:
    """Where `threeport up` registers itself (THREEPORT_CONFIG), so the user's own config is never touched."""
    return tmp_path / "client" / "config.yaml"


def start(home: Path, ports: dict[str, int], client_config: Path) -> tuple[subprocess.Popen, str, str]:
    unset = ("NATS_URL", "DATABASE_URL", "THREEPORT_API_TOKEN", "THREEPORT_ENCRYPTION_KEY")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        THREEPORT_CONFIG=str(client_config),
        THREEPORT_HOME=str(home),
        THREEPORT_NATS_PORT=str(ports["nats"]),
        THREEPORT_POSTGRES_PORT=str(ports["postgres"]),
        THREEPORT_API_PORT=str(ports["api"]),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    for line in proc.stdout:
        if "API listening on" in line:
            config = json.loads((home / "config.json").read_text())
            return proc, config["api_url"], config["token"]
    raise AssertionError(f"threeport up exited with {proc.wait()} before the API listened")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def test_up_runs_everything_stops_cleanly_and_keeps_its_data(home, client_config):
    # Given `threeport up` on free ports with its data in a fresh home
    ports = {"nats": free_port(), "postgres": free_port(), "api": free_port()}
    proc, api_url, token = start(home, ports, client_config)
    try:
        # Then it registered itself in the client config as the current control plane, readable by me only
        assert yaml.safe_load(client_config.read_text()) == {
            "current": "local",
            "control_planes": [{"name": "local", "api_url": api_url, "token": token}],
        }
        assert client_config.stat().st_mode & 0o777 == 0o600
        # And it generated the secret-field key, readable by me only, and gave it to the API: secrets can be stored
        key = (home / "encryption.key").read_text().strip()
        assert (home / "encryption.key").stat().st_mode & 0o777 == 0o600
        account = {
            "name": "main",
            "account_id": "123456789012",
            "default_region": "us-east-1",
            "access_key_id": "AKIAEXAMPLE",
            "secret_access_key": "s3cret",
        }
        assert "secret_access_key" not in call("POST", f"{api_url}/v0/aws-accounts", token, account)

        # When a WorkloadDefinition is created through the API it printed
        created = call("POST", f"{api_url}/v0/workload-definitions", token, {"name": "web", "yaml_document": YAML})
        assert created["generation"] == 1
        assert (home / "config.json").stat().st_mode & 0o777 == 0o600

        # Then the workers reconcile it within seconds
        deadline = time.monotonic() + 30
        while (seen := call("GET", f"{api_url}/v0/workload-definitions/{created['id']}", token))[
            "observed_generation"
        ] != 1:
            assert time.monotonic() < deadline, f"never reconciled: {seen['status']}"
            time.sleep(0.1)
        assert seen["status"]["phase"] == "Reconciled" and seen["reconciled"] is True

        # And a second object, deleted, answers 202 and is gone once the reconciler confirms
        doomed = call("POST", f"{api_url}/v0/workload-definitions", token, {"name": "gone", "yaml_document": YAML})
        assert call("DELETE", f"{api_url}/v0/workload-definitions/{doomed['id']}", token)["deletion_scheduled"]
        deadline = time.monotonic() + 30
        while status_of(f"{api_url}/v0/workload-definitions/{doomed['id']}", token) != 404:
            assert time.monotonic() < deadline, "a deleted object never went away"
            time.sleep(0.1)
    finally:
        # And it is stopped with SIGTERM
        assert stop(proc) == 0

    # Then nothing it started is left listening
    time.sleep(0.5)
    assert not any(listening(p) for p in ports.values())

    # And a second run reuses the data, the token and the key
    proc, api_url, second_token = start(home, ports, client_config)
    try:
        assert second_token == token
        assert (home / "encryption.key").read_text().strip() == key
        # (reading the account decrypts its secrets: it fails with any other key)
        assert [a["name"] for a in call("GET", f"{api_url}/v0/aws-accounts", token)["items"]] == ["main"]
        found = call("GET", f"{api_url}/v0/workload-definitions?name=web", token)
        assert [o["id"] for o in found["items"]] == [created["id"]]
    finally:
        assert stop(proc) == 0


def _nats_pid(home: Path) -> int:
    config = str(home / "nats" / "threeport.conf")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if config in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    return int(entry.name)
            except OSError:
                continue
    raise AssertionError("no nats-server runs with this home's config")


def _postgres_pid(home: Path) -> int:
    return int((home / "postgres" / "data" / "postmaster.pid").read_text().split("\n", 1)[0])


@pytest.mark.parametrize(
    "server, pid_of, says", [("nats", _nats_pid, "NATS server"), ("postgres", _postgres_pid, "PostgreSQL")]
)
def test_up_stops_everything_and_says_so_when_an_embedded_server_dies(home, client_config, server, pid_of, says):
    # Given `threeport up` running with its embedded servers
    ports = {"nats": free_port(), "postgres": free_port(), "api": free_port()}
    proc, api_url, token = start(home, ports, client_config)
    try:
        # When one of those servers is killed
        os.kill(pid_of(home), signal.SIGKILL)

        # Then `up` notices, names it and where its log is, stops the rest and exits with 1
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            stop(proc)
    assert proc.returncode == 1
    assert f"the embedded {says} stopped" in output and str(home) in output
    time.sleep(0.5)
    assert not any(listening(p) for p in ports.values())


def test_up_stops_everything_and_says_so_when_its_worker_is_killed(home, client_config):
    # Given `threeport up` running
    ports = {"nats": free_port(), "postgres": free_port(), "api": free_port()}
    proc, api_url, token = start(home, ports, client_config)
    try:
        # When its worker process is killed
        worker = next(
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _is_worker_of(entry, proc.pid)
        )
        os.kill(worker, signal.SIGKILL)

        # Then `up` names it and how it died, says where its output is, stops the rest and exits with 1
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            stop(proc)
    assert proc.returncode == 1
    assert "error: 'threeport worker' was killed by SIGKILL; its output is above. Stopping…" in output
    time.sleep(0.5)
    assert not any(listening(p) for p in ports.values())


def _is_worker_of(entry: Path, parent: int) -> bool:
    """Whether /proc/<pid> is the `threeport worker` that `up` (``parent``) started."""
    try:
        stat = (entry / "stat").read_text()
        arguments = (entry / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"worker" in arguments
