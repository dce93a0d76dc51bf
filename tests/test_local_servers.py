"""The embedded servers `threeport up` and the test fixtures start."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cli.local_servers import NatsServer, PostgresServer, ServerError


def _environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


@pytest.mark.parametrize("operator_setting, expected", [(None, "1"), ("3", "3")])
def test_embedded_nats_runs_one_go_thread_unless_the_operator_says_otherwise(
    tmp_path, monkeypatch, operator_setting, expected
):
    # Given an operator who did or did not set GOMAXPROCS
    if operator_setting is None:
        monkeypatch.delenv("GOMAXPROCS", raising=False)
    else:
        monkeypatch.setenv("GOMAXPROCS", operator_setting)

    # When the embedded NATS server starts
    server = NatsServer(store_dir=tmp_path).start()
    try:
        # Then it runs with the operator's setting, or one scheduler thread by default
        assert _environment_of(server.proc.pid)["GOMAXPROCS"] == expected
        assert server.running
    finally:
        server.stop()


def test_postgres_under_a_directory_closed_to_its_user_is_refused_with_the_way_out():
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user (it refuses root)")
    # Given a home directory only root may enter (as `mktemp -d` makes one)
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)
    home = base / "home"
    home.mkdir(mode=0o700)
    try:
        # When the embedded PostgreSQL is started under it
        with pytest.raises(ServerError) as raised:
            PostgresServer(base_dir=home / "postgres").start()

        # Then the error names the closed directory and how to open it
        assert f"{home} is closed to other users (mode 700)" in str(raised.value)
        assert f"chmod o+x {home}" in str(raised.value)
    finally:
        shutil.rmtree(base)
