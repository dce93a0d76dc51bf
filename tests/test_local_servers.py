"""The embedded servers `threeport up` and the test fixtures start."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.local_servers import NatsServer


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
