"""The shipped NATS configuration keeps the durability settings production needs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cli.local_servers import nats_server_binary

CONF = Path(__file__).resolve().parent.parent / "compose" / "nats" / "nats-server.conf"


def test_production_nats_fsyncs_every_write():
    # Given the production NATS configuration, when I read its JetStream block
    text = CONF.read_text()
    block = re.search(r"jetstream\s*\{(.*?)\}", text, re.S).group(1)

    # Then every write is fsynced before the PubAck
    assert re.search(r"^\s*sync_interval:\s*always\s*$", block, re.M)


def test_production_nats_configuration_is_accepted_by_nats_server():
    # Given the production configuration, when nats-server checks it (-t: test the configuration)
    result = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(CONF)],
        env={"SERVER_NAME": "nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
    )

    # Then it is valid
    assert result.returncode == 0, result.stderr + result.stdout
