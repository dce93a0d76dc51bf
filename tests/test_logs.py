"""Structured logs: JSON or console lines, and the ids they carry in the API and in reconciles."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from dramatiq import Worker
from dramatiq.message import Message
from falcon import testing

from api.app import create_app
from api.settings import Settings, hash_token
from models import WorkloadDefinition, store
from tasks.actor import declare_actors
from workers import logs
from workers.heartbeats import bucket_name
from workers.outbox_relay import publish_rows

from .conftest import nats_call
from .reconciling import reconciled, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "logs-test-token"
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


class Captured(io.StringIO):
    """A stream that says whether it is a terminal, and hands back its lines as JSON."""

    def __init__(self, *, terminal: bool = False) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def configured():
    """``logs.configure`` for the test, undone afterwards (the root logger's level, structlog's defaults)."""
    root = logging.getLogger()
    level, installed = root.level, []

    def configure(stream, **options) -> None:
        installed.append(logs.configure(stream=stream, **options))

    yield configure
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def test_lines_are_json_off_a_terminal_and_for_people_on_one(configured):
    # Given logging set up for a pipe, then for a terminal, then for a terminal with THREEPORT_LOG_FORMAT=json
    pipe, terminal, forced = Captured(), Captured(terminal=True), Captured(terminal=True)
    log = logging.getLogger("threeport.test")

    configured(pipe)
    log.info("to a pipe", extra={"answer": 42})
    configured(terminal, format="console")
    log.info("to a terminal")
    logs.configure_from_env({logs.FORMAT_ENV: "json", logs.LEVEL_ENV: "warning"}, stream=forced)
    log.info("below the level")
    log.warning("forced")

    # Then the pipe got one JSON object per line, with level, logger, time and the extra fields
    (line,) = pipe.lines()
    assert line["event"] == "to a pipe" and line["level"] == "info" and line["answer"] == 42
    assert line["logger"] == "threeport.test" and line["timestamp"].endswith("Z")
    # And the terminal a line for people, not JSON
    assert "to a terminal" in terminal.getvalue() and not terminal.getvalue().startswith("{")
    # And the environment chose JSON on a terminal, and the level dropped the info line
    assert [line["event"] for line in forced.lines()] == ["forced"]


def test_every_line_of_an_api_request_carries_its_request_id(database, configured):
    # Given the API, whose fast-path publish fails (so the request logs a warning), logging JSON lines
    captured = Captured()
    configured(captured)

    def failing_publish(rows) -> None:
        raise ConnectionError("NATS is away")

    app = create_app(Settings(token_hashes=frozenset({hash_token(TOKEN)})), publish=failing_publish)
    client = testing.TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})

    # When an object is created with a request id
    created = client.simulate_post(
        "/v0/workload-definitions",
        json={"name": "web", "yaml_document": YAML},
        headers={"X-Request-Id": "req-logs-1"},
    )
    logging.getLogger("threeport.test").warning("after the request")

    # Then the line logged while handling it carries the request id
    assert created.status_code == 201 and created.headers["X-Request-Id"] == "req-logs-1"
    lines = captured.lines()
    (publish_failed,) = [line for line in lines if line["event"].startswith("Fast-path publish failed")]
    assert publish_failed["request_id"] == "req-logs-1" and "NATS is away" in publish_failed["exception"]
    # And a line logged after the request does not
    assert "request_id" not in lines[-1] and lines[-1]["event"] == "after the request"


def test_every_line_of_a_reconcile_carries_the_object_and_message_ids(database, broker, locks, configured):
    # Given a worker whose broker binds each message's ids into the log context, logging JSON at debug level
    captured = Captured()
    configured(captured, level="debug")
    logs.add_message_context(broker)
    declare_actors(broker, locks=locks, min_backoff=200, max_backoff=1000)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        # When a WorkloadDefinition is reconciled
        written = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
        publish_rows(broker, written.outbox)
        wait_for(lambda: reconciled(WorkloadDefinition, written.obj.id))
        # And a message for an unknown kind, on its third attempt, is dropped
        dropped = broker.enqueue(
            Message(
                queue_name="workloads",
                actor_name="reconcile",
                args=(),
                kwargs={"kind": "NoSuchKind", "object_id": "x", "generation": 1},
                options={"retries": 2},
            )
        )

        def lines_about(object_id: str) -> list[dict]:
            return [line for line in captured.lines() if line.get("object_id") == object_id]

        wait_for(lambda: any(line["level"] == "error" for line in lines_about("x")))
    finally:
        worker.stop()

    # Then the reconcile's line carries the kind, the object id, the message id and the attempt
    object_id = str(written.obj.id)
    (finished,) = [line for line in lines_about(object_id) if line["event"].startswith("Reconcile of a")]
    assert finished["kind"] == "WorkloadDefinition" and finished["result"] == "reconciled"
    assert finished["queue"] == "workloads" and finished["attempt"] == 0 and finished["message_id"]
    # And the dropped message's error line says which message, which attempt and what object
    (error,) = [line for line in lines_about("x") if line["level"] == "error"]
    assert error["kind"] == "NoSuchKind" and error["message_id"] == dropped.message_id and error["attempt"] == 2
    # And lines logged outside a message carry no message ids
    assert all("message_id" not in line for line in captured.lines() if line["logger"] == "dramatiq.worker.Worker")


def test_a_worker_process_logs_json_lines_with_the_reconciles_ids(
    database, empty_database_url, nats_server, broker, prefix, tmp_path
):
    # Given `threeport worker` with its stderr going to a file (not a terminal) at debug level
    stderr = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": empty_database_url,
        "NATS_URL": nats_server.url,
        logs.LEVEL_ENV: "debug",
    }
    env.pop(logs.FORMAT_ENV, None)
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--threads", "2", "--prefix", prefix],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout.readline().startswith("worker ready")

        # When an object is reconciled there
        written = store.create(WorkloadDefinition, {"name": "web", "yaml_document": YAML})
        publish_rows(broker, written.outbox)
        wait_for(lambda: reconciled(WorkloadDefinition, written.obj.id))
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        nats_call(broker, lambda js: js.delete_key_value(bucket_name(prefix)))

    # Then every line it logged is a JSON object
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert lines and all({"event", "level", "timestamp"} <= line.keys() for line in lines)
    # And the reconcile's lines carry the object's and the message's ids
    about = [line for line in lines if line.get("object_id") == str(written.obj.id)]
    assert about and all(line["kind"] == "WorkloadDefinition" and line["message_id"] for line in about)
    assert any(line["event"].startswith("Reconcile of a") and line["attempt"] == 0 for line in about)
