"""Workers alone: reconciles per second a ``threeport worker`` sustains on a backlog, without the API.

It starts PostgreSQL and NATS on free ports in a temporary directory,
migrates, writes ``--objects`` DomainNameDefinitions (a kind whose reconcile
has nothing to build) with their outbox rows and publishes them, so that
the queue holds them all. Then it starts ``python -m cli.main worker
--processes P --threads T`` and counts reconciled objects every 100 ms
until all are. The rate is taken from the first reconciled object to the
last, so the worker's start-up is left out (and printed apart).

Run::

    .venv/bin/python bench/drain.py
    .venv/bin/python bench/drain.py --objects 10000 --processes 2 --threads 16

It is a benchmark, not a test: it exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.local_servers import NatsServer, PostgresServer, free_port  # noqa: E402
from models import store  # noqa: E402
from models.database import bind, database_from_url  # noqa: E402
from models.gateways import DomainNameDefinition  # noqa: E402
from models.migrations import migrate  # noqa: E402
from workers.broker import JetStreamBroker  # noqa: E402
from workers.outbox_relay import publish_rows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", "-n", type=int, default=3_000, help="objects queued (default 3000)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="threeport-drain-"))
    home.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    postgres = PostgresServer(base_dir=home / "postgres", port=free_port()).start()
    nats = NatsServer(store_dir=home / "nats", port=free_port(), name="drain").start()
    try:
        url = postgres.create_database("drain")
        database = database_from_url(url)
        bind(database)
        migrate(database)
        print(f"queueing {args.objects:,} DomainNameDefinitions ...", file=sys.stderr)
        broker = JetStreamBroker(nats.url, replicas=1)
        body = {"domain": "example.com", "admin_email": "ops@example.com"}
        rows = [
            row
            for n in range(args.objects)
            for row in store.create(DomainNameDefinition, {**body, "name": f"d{n}"}).outbox
        ]
        for start in range(0, len(rows), 500):
            publish_rows(broker, rows[start : start + 500])
        broker.close()
        env = {**os.environ, "DATABASE_URL": url, "NATS_URL": nats.url, "THREEPORT_NATS_REPLICAS": "1"}
        env.setdefault("THREEPORT_LOG_LEVEL", "warning")  # its errors still show
        command = ["worker", "--processes", str(args.processes), "--threads", str(args.threads)]
        started = time.monotonic()
        worker = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
        )
        try:
            reconciled = DomainNameDefinition.observed_generation >= 1
            first = None
            while (done := DomainNameDefinition.select().where(reconciled).count()) < args.objects:
                if done and first is None:
                    first = (time.monotonic(), done)
                if worker.poll() is not None:
                    print(f"the worker exited with code {worker.returncode}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            end = time.monotonic()
            first = first or (end, 0)
            rate = (args.objects - first[1]) / (end - first[0]) if end > first[0] else float("nan")
            print(
                f"{args.processes} worker process(es) x {args.threads} threads: {rate:,.0f} reconciles/s "
                f"({args.objects:,} no-op objects; start-up {first[0] - started:.1f}s left out)"
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    finally:
        nats.stop()
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
