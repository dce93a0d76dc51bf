"""The outbox relay and the resync sweep, over real PostgreSQL and NATS."""

from __future__ import annotations

import logging
import time

import pytest
from dramatiq import Worker

from cli.local_servers import NatsServer, free_port
from models import Outbox, WorkloadDefinition, store
from tasks.actor import declare_actors
from workers.broker import JetStreamBroker
from workers.relay import Relay

from .reconciling import wait_for
from .test_reconcile import YAML, calls, observed  # noqa: F401  (fixtures)


@pytest.fixture
def relay(broker, locks):  # noqa: F811
    relay = Relay(broker, older_than=0, resync_after=0, interval=0.2, locks=locks)
    yield relay
    relay.stop()


@pytest.fixture
def worker(database, broker, locks, calls):  # noqa: F811
    declare_actors(broker, locks=locks)
    worker = Worker(broker, worker_timeout=100, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


def test_a_commit_whose_fast_path_publish_was_lost_is_reconciled_through_the_relay(broker, worker, relay):
    # Given an object committed, its outbox row never published
    obj = store.create(WorkloadDefinition, {"name": "lost", "yaml_document": YAML}).obj

    # When the relay runs, then it publishes the row and deletes it
    assert relay.run_once() == 1
    assert Outbox.select().count() == 0
    # And the object is reconciled
    assert wait_for(lambda: observed(obj.id)).status["phase"] == "Reconciled"


def test_the_sweep_reenqueues_an_object_whose_message_was_lost(broker, worker, relay):
    # Given an object whose outbox row was deleted without being published
    written = store.create(WorkloadDefinition, {"name": "swept", "yaml_document": YAML})
    store.delete_outbox([written.outbox[0].id])

    # When the sweep runs, then the object is enqueued and reconciled
    assert relay.sweep_once(older_than_seconds=0) == 1
    assert wait_for(lambda: observed(written.obj.id)).status["phase"] == "Reconciled"
    # And once reconciled the sweep leaves it alone
    assert relay.sweep_once(older_than_seconds=0) == 0


def test_two_sweeps_in_one_window_enqueue_an_object_once(database, broker, relay):
    # Given an unreconciled object and no worker
    written = store.create(WorkloadDefinition, {"name": "dedupe", "yaml_document": YAML})
    store.delete_outbox([written.outbox[0].id])

    # When two sweeps run within the resync window
    relay.sweep_once(older_than_seconds=0)
    relay.sweep_once(older_than_seconds=0)

    # Then one message waits on the queue
    assert broker.queue_stats("workloads").ready == 1


def test_only_the_leader_relays_and_another_takes_over_when_it_stops(database, broker, locks, relay):  # noqa: F811
    # Given two relays on one lock bucket, and a row left in the outbox
    other = Relay(broker, older_than=0, locks=locks)
    store.create(WorkloadDefinition, {"name": "led", "yaml_document": YAML})

    # When both take a round, then only the first one works (publishing the row, resyncing its object)
    assert relay.tick() == (1, 1)
    assert other.tick() is None

    # When the leader stops, then the other one takes over
    relay.stop()
    assert other.tick() == (0, 0)
    other.stop()


def test_a_row_for_a_queue_no_message_can_reach_holds_no_other_back(database, broker, relay, caplog):
    # Given a row whose queue NATS cannot name (left from before queue names were checked), older than another
    stuck = store.create(WorkloadDefinition, {"name": "stuck", "yaml_document": YAML}).outbox[0]
    Outbox.update(queue="ext.acme.com.a b").where(Outbox.id == stuck.id).execute()
    store.create(WorkloadDefinition, {"name": "behind", "yaml_document": YAML})

    # When the relay runs, then the other row is published, and the stuck one is kept with an error
    with caplog.at_level(logging.ERROR, logger="workers.outbox_relay"):
        assert relay.run_once() == 1
    assert [row.id for row in Outbox.select()] == [stuck.id]
    assert "cannot be published: invalid queue name 'ext.acme.com.a b'" in caplog.text


def test_the_background_loop_publishes_leftover_rows(database, broker, relay):
    # Given a row left in the outbox
    store.create(WorkloadDefinition, {"name": "looped", "yaml_document": YAML})

    # When the relay runs in the background, then the row is published
    relay.start()
    wait_for(lambda: Outbox.select().count() == 0)
    assert broker.queue_stats("workloads").ready >= 1


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(database, prefix, tmp_path, caplog):
    # Given a relay whose NATS server is not there yet, running rounds every 20 ms
    port = free_port()
    broker = JetStreamBroker(f"nats://127.0.0.1:{port}", prefix=prefix, connect_timeout=0.2)
    relay = Relay(broker, older_than=0, interval=0.02)
    server = NatsServer(store_dir=tmp_path / "nats", port=port)
    caplog.set_level(logging.WARNING, logger="workers.relay")
    relay.start()
    try:
        # When many rounds fail
        wait_for(lambda: relay._thread is not None and len(caplog.records) >= 1, timeout=10)
        time.sleep(1.0)
        # Then the failure is logged once, with its cause, not once per round
        failures = [r for r in caplog.records if "failed" in r.getMessage()]
        assert len(failures) == 1 and "retrying every 0.02s" in failures[0].getMessage()
        assert failures[0].exc_info is not None

        # When the server comes up, then the end of the outage is logged once too
        server.start()
        wait_for(lambda: any("succeed again" in r.getMessage() for r in caplog.records), timeout=20)
    finally:
        relay.stop()
        broker.close()
        server.stop()
    assert len([r for r in caplog.records if "failed" in r.getMessage() and "succeed" not in r.getMessage()]) == 1
