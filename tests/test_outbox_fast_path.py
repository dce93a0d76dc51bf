"""The API's fast path: rows published before the answer, deleted in batches behind it (real NATS, PostgreSQL)."""

from __future__ import annotations

import pytest
from dramatiq.errors import ConnectionFailed

from cli.local_servers import free_port
from models import Outbox, WorkloadDefinition, store
from workers.outbox_relay import FastPath
from workers.relay import Relay

from .reconciling import wait_for

YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n"


def written(count: int) -> list[Outbox]:
    rows = []
    for n in range(count):
        rows += store.create(WorkloadDefinition, {"name": f"web-{n}", "yaml_document": YAML}).outbox
    return rows


def test_rows_are_published_at_once_and_deleted_together_a_moment_later(database, broker):
    # Given a fast path whose background deletes wait long, and ten writes' rows
    fast = FastPath(broker, interval=30)
    rows = written(10)

    # When each write's row is published as its request would
    assert [fast([row]) for row in rows] == [1] * 10

    # Then every message is on the queue before any row is deleted
    assert broker.get_queue_message_counts("workloads") == (10, 0, 0)
    assert Outbox.select().count() == 10
    # And one flush deletes all ten, in one statement
    assert fast.flush() == 10
    assert Outbox.select().count() == 0
    assert fast.flush() == 0
    fast.close()


def test_the_background_thread_deletes_published_rows(database, broker):
    # Given a fast path with its usual short wait
    fast = FastPath(broker, interval=0.05)

    # When rows are published, then they are gone moments later without a flush
    fast(written(3))
    wait_for(lambda: Outbox.select().count() == 0, timeout=5)
    assert broker.get_queue_message_counts("workloads") == (3, 0, 0)
    fast.close()


def test_a_row_published_but_not_deleted_yet_is_enqueued_once_when_the_relay_sweeps_it(database, broker, locks):
    # Given rows the fast path published and has not deleted yet (as when its process dies)
    fast = FastPath(broker, interval=30)
    fast(written(4))

    # When the relay publishes what it finds in the outbox
    relay = Relay(broker, older_than=0, locks=locks)
    try:
        assert relay.run_once() == 4
    finally:
        relay.stop()

    # Then JetStream dropped the second publishes: one message per row, and the outbox is empty
    assert broker.get_queue_message_counts("workloads") == (4, 0, 0)
    assert Outbox.select().count() == 0
    # And the fast path's own deletes, late, find nothing left to delete
    assert fast.flush() == 0


def test_rows_that_could_not_be_published_are_kept_for_the_relay(database, make_broker):
    # Given a fast path whose broker cannot reach NATS
    dead = make_broker(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=1.0)
    fast = FastPath(dead, interval=0.05)

    # When it is given a write's rows, then the publish fails and nothing is queued for deletion
    with pytest.raises(ConnectionFailed):
        fast(written(1))
    assert fast.flush() == 0
    assert Outbox.select().count() == 1
    fast.close()
