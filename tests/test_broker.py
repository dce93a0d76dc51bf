"""JetStreamBroker against a real nats-server: Dramatiq's broker behaviours."""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.errors import ConnectionClosed, ConnectionFailed, QueueJoinTimeout, QueueNotFound
from dramatiq.message import Message

from cli.local_servers import NatsServer, free_port
from workers import consumer as consumer_module
from workers import dead_letters
from workers.broker import PartialEnqueue
from workers.consumer import JetStreamMessage
from workers.naming import DURABLE

from .conftest import nats_call


def test_actors_can_be_sent_and_processed(broker, worker):
    # Given an actor that records its argument
    seen = []

    @dramatiq.actor
    def record(n):
        seen.append(n)

    # When I send it twenty messages
    for n in range(20):
        record.send(n)

    # Then every one of them is processed once
    broker.join(record.queue_name, timeout=10_000)
    worker.join()
    assert sorted(seen) == list(range(20))


def test_enqueue_is_confirmed_and_counted_before_any_worker_runs(broker):
    # Given an actor and no worker
    @dramatiq.actor(queue_name="pending")
    def noop():
        pass

    # When I send five messages
    for _ in range(5):
        noop.send()

    # Then the server holds all five as ready
    assert broker.get_queue_message_counts("pending") == (5, 0, 0)


def test_delayed_messages_run_in_due_order_and_not_before_their_time(broker, worker):
    # Given an actor that records when it ran
    ran = []

    @dramatiq.actor
    def record(name):
        ran.append((name, time.monotonic()))

    # When I send one message now and two with delays, the longer one first
    start = time.monotonic()
    record.send_with_options(args=("late",), delay=900)
    record.send_with_options(args=("soon",), delay=300)
    record.send("now")

    # Then while they wait they are counted as delayed, not ready
    time.sleep(0.1)
    ready, delayed, dead = broker.get_queue_message_counts(record.queue_name)
    assert (delayed, dead) == (2, 0)

    # And they run in due order, none before its time
    broker.join(record.queue_name, timeout=10_000)
    worker.join()
    assert [name for name, _ in ran] == ["now", "soon", "late"]
    times = dict(ran)
    assert times["soon"] - start >= 0.3
    assert times["late"] - start >= 0.9


def test_without_server_schedules_delays_fall_back_to_delayed_redelivery(broker, worker):
    # Given a broker that treats the server as one without message schedules (< 2.12)
    broker._schedules = False
    ran = []

    @dramatiq.actor
    def record(name):
        ran.append((name, time.monotonic()))

    # When I send a delayed message and an immediate one
    start = time.monotonic()
    record.send_with_options(args=("later",), delay=500)
    record.send("now")

    # Then the delayed one still runs last and not before its time
    broker.join(record.queue_name, timeout=10_000)
    worker.join()
    assert [name for name, _ in ran] == ["now", "later"]
    assert dict(ran)["later"] - start >= 0.5


def test_a_retry_that_cannot_be_enqueued_is_redelivered_not_lost(broker, worker):
    # Given an actor that fails on its first attempt
    attempts = []

    @dramatiq.actor(min_backoff=200, max_backoff=200)
    def fails_once():
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    # And a queue stream that refuses messages as large as the retry (which carries a traceback)
    async def limit(js):
        await broker.ensure_queue(fails_once.queue_name)
        info = await js.stream_info(broker.names.stream(fails_once.queue_name))
        info.config.max_msg_size = 512
        await js.update_stream(info.config)

    nats_call(broker, limit)

    # When the message fails and its retry cannot be enqueued
    fails_once.send()

    # Then the message is not lost: it is redelivered and its second attempt succeeds
    deadline = time.monotonic() + 15
    while len(attempts) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    broker.join(fails_once.queue_name, timeout=10_000)
    worker.join()
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.1  # after the backoff (jittered), not at once
    assert broker.get_queue_message_counts(fails_once.queue_name) == (0, 0, 0)


def test_failing_actors_are_retried_with_backoff(broker, worker):
    # Given an actor that fails twice, then succeeds
    attempts = []

    @dramatiq.actor(min_backoff=200, max_backoff=400, max_retries=5)
    def flaky():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    # When I send it once
    flaky.send()

    # Then it ran three times, each retry after at least the minimum backoff
    broker.join(flaky.queue_name, timeout=15_000)
    worker.join()
    assert len(attempts) == 3
    assert all(b - a >= 0.2 for a, b in zip(attempts, attempts[1:]))
    # And nothing was dead-lettered
    assert broker.get_queue_message_counts(flaky.queue_name) == (0, 0, 0)


def test_retries_exhausted_are_dead_lettered_with_their_error(broker, worker):
    # Given an actor that always fails and may retry once
    @dramatiq.actor(min_backoff=50, max_backoff=50, max_retries=1)
    def doomed(x):
        raise ValueError(f"bad input {x}")

    # When I send it
    message = doomed.send(7)

    # Then after two attempts it is a dead letter that says why
    broker.join(doomed.queue_name, timeout=15_000)
    worker.join()
    assert broker.get_queue_message_counts(doomed.queue_name) == (0, 0, 1)
    [letter] = nats_call(broker, lambda js: dead_letters.read(js, broker.names, doomed.queue_name))
    assert letter.message_id == message.message_id
    assert letter.reason == dead_letters.Reason.FAILED
    assert "ValueError: bad input 7" in letter.error
    assert letter.message.args == (7,)
    assert letter.message.options["retries"] == 2


def test_messages_for_unknown_actors_are_dead_lettered(broker, worker):
    # Given a queue with one known actor
    @dramatiq.actor(queue_name="mixed")
    def known():
        pass

    # When a message arrives for an actor this worker does not have
    broker.enqueue(Message(queue_name="mixed", actor_name="ghost", args=(), kwargs={}, options={}))
    known.send()

    # Then it is dead-lettered and the known one is processed
    broker.join("mixed", timeout=10_000)
    worker.join()
    [letter] = nats_call(broker, lambda js: dead_letters.read(js, broker.names, "mixed"))
    assert letter.actor == "ghost"
    assert "ActorNotFound" in letter.error


def test_undecodable_messages_are_dead_lettered(broker, worker):
    # Given a declared queue with a worker on it
    @dramatiq.actor(queue_name="raw")
    def noop():
        pass

    noop.send()
    broker.join("raw", timeout=10_000)

    # When something that is not a Dramatiq message is published on it
    nats_call(broker, lambda js: js.publish(broker.names.ready_subject("raw"), b"\xff not json"))

    # Then it is kept as an undecodable dead letter
    deadline = time.monotonic() + 10
    while broker.get_queue_message_counts("raw")[2] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    [letter] = nats_call(broker, lambda js: dead_letters.read(js, broker.names, "raw"))
    assert letter.reason == dead_letters.Reason.UNDECODABLE
    assert letter.message is None and letter.data == b"\xff not json"


def test_join_times_out_when_nobody_consumes(broker):
    # Given a message that no worker will take
    @dramatiq.actor(queue_name="orphans")
    def orphan():
        pass

    orphan.send()

    # When I join the queue with a timeout, then it raises QueueJoinTimeout
    started = time.monotonic()
    with pytest.raises(QueueJoinTimeout):
        broker.join("orphans", timeout=300)
    assert time.monotonic() - started < 2


def test_flush_drops_ready_delayed_and_dead_messages(broker):
    # Given ready, delayed and dead messages on a queue
    @dramatiq.actor(queue_name="flushme")
    def noop():
        pass

    for _ in range(3):
        noop.send()
    noop.send_with_options(delay=60_000)
    nats_call(
        broker,
        lambda js: dead_letters.bury(js, broker.names, queue="flushme", data=b"x", reason="failed", error="e"),
    )
    assert broker.get_queue_message_counts("flushme") == (3, 1, 1)

    # When I flush it
    broker.flush_all()

    # Then nothing is left
    assert broker.get_queue_message_counts("flushme") == (0, 0, 0)


def test_a_repeated_msg_id_is_enqueued_once_but_retries_are_not(broker):
    # Given an actor
    @dramatiq.actor(queue_name="dedupe")
    def noop():
        pass

    # When the same enqueue is published twice with one Nats-Msg-Id
    message = noop.message()
    broker.enqueue(message, msg_id="outbox-1")
    broker.enqueue(message, msg_id="outbox-1")
    # And the same Dramatiq message is enqueued again without one (as Retries does)
    broker.enqueue(message)

    # Then the duplicate publish was dropped, the re-enqueue was not
    assert broker.get_queue_message_counts("dedupe") == (2, 0, 0)


def test_bulk_enqueue_confirms_every_message_and_honours_msg_ids(broker):
    # Given a thousand messages with their own ids
    @dramatiq.actor(queue_name="bulk")
    def noop(n):
        pass

    messages = [noop.message(n) for n in range(1000)]
    ids = [f"row-{n}" for n in range(1000)]

    # When I enqueue them in bulk twice
    assert len(broker.enqueue_many(messages, msg_ids=ids)) == 1000
    broker.enqueue_many(messages, msg_ids=ids)

    # Then each is on the queue exactly once
    assert broker.get_queue_message_counts("bulk") == (1000, 0, 0)


def test_a_bulk_enqueue_failing_part_way_names_what_was_confirmed(broker):
    # Given 2,500 messages (three rounds of publishes) whose 1,500th is over the server's size limit
    @dramatiq.actor(queue_name="bulkfail")
    def noop(blob):
        pass

    messages = [noop.message("x" * (2 * 1024 * 1024) if n == 1500 else "") for n in range(2500)]

    # When they are enqueued in bulk
    with pytest.raises(PartialEnqueue) as failure:
        broker.enqueue_many(messages)

    # Then the round before the failure is confirmed and on the queue, the rest reported as not
    assert len(failure.value.enqueued) == 1000
    assert failure.value.failed_indexes == set(range(1000, 2500))
    assert broker.get_queue_message_counts("bulkfail") == (1000, 0, 0)


def test_consuming_an_undeclared_queue_raises(broker):
    with pytest.raises(QueueNotFound):
        broker.consume("nobody-declared-this")


def _ready_messages(queue_name: str, count: int) -> None:
    @dramatiq.actor(queue_name=queue_name)
    def noop():
        pass

    for _ in range(count):
        noop.send()


def _taken(consumer, tries: int) -> list:
    """What ``tries`` calls of ``next`` hand over (each waits up to the consumer's timeout)."""
    return [m for m in (next(consumer) for _ in range(tries)) if m is not None]


def test_prefetch_bounds_what_a_consumer_holds(broker):
    # Given ten ready messages
    _ready_messages("prefetch", 10)

    # When a consumer with prefetch 3 takes what it can without acking
    consumer = broker.consume("prefetch", prefetch=3, timeout=300)
    taken = _taken(consumer, 5)

    # Then it holds three, and the server shows three in flight
    assert len(taken) == 3
    stats = broker.queue_stats("prefetch")
    assert (stats.ready, stats.in_flight) == (7, 3)

    # And acking one frees room for exactly one more
    consumer.ack(taken[0])
    assert next(consumer) is not None
    assert next(consumer) is None
    consumer.close()


def test_a_full_consumer_pulls_again_once_a_quarter_of_its_prefetch_is_free(broker):
    # Given a consumer with prefetch 8 holding eight of twenty ready messages
    _ready_messages("refill", 20)
    consumer = broker.consume("refill", prefetch=8, timeout=300)
    taken = _taken(consumer, 9)
    assert len(taken) == 8

    # When it acks one, then it pulls nothing yet (one free slot of eight)
    consumer.ack(taken[0])
    assert next(consumer) is None

    # When it acks a second, then it pulls two more at once, and no more
    consumer.ack(taken[1])
    assert len(_taken(consumer, 3)) == 2
    assert broker.queue_stats("refill").in_flight == 8
    consumer.close()


def test_messages_are_handed_over_as_they_come_without_waiting_for_a_full_batch(broker, monkeypatch):
    # Given pulls that may wait five seconds on the server for their batch, and one message waiting
    monkeypatch.setattr(consumer_module, "PULL_WAIT", 5.0)

    @dramatiq.actor(queue_name="trickle")
    def noop():
        pass

    noop.send()

    # When a consumer with room for eight starts, then it has the message well before five seconds
    consumer = broker.consume("trickle", prefetch=8, timeout=100)
    assert _next_within(consumer, 2.5) is not None
    # And so it has one more that comes while it is idle
    time.sleep(0.5)
    noop.send()
    assert _next_within(consumer, 2.5) is not None
    consumer.close()


def _next_within(consumer, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            consumer.ack(message)
            return message
    return None


def test_shutdown_hands_prefetched_messages_back_at_once(make_broker):
    # Given a long ack wait, so only a hand-back can make messages ready soon
    broker = make_broker(ack_wait=30.0)
    dramatiq.set_broker(broker)
    # And a slow actor and a one-thread worker that prefetched several messages
    started = threading.Event()

    @dramatiq.actor(queue_name="slow")
    def slow():
        started.set()
        time.sleep(0.5)

    for _ in range(6):
        slow.send()
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    assert started.wait(10)

    # When the worker stops
    worker.stop()

    # Then the five it did not run go to the next consumer at once, not after the ack wait
    consumer = broker.consume("slow", prefetch=10, timeout=100)
    deadline = time.monotonic() + 3.0
    taken = []
    while len(taken) < 5 and time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            taken.append(message)
            consumer.ack(message)
    consumer.close()
    assert len(taken) == 5
    assert broker.queue_stats("slow").in_flight == 0


def test_long_actors_are_not_redelivered_while_they_run(broker, worker):
    # Given an ack_wait of 2 s and an actor that runs for 5 s
    runs = []

    @dramatiq.actor(time_limit=20_000)
    def long_task():
        runs.append(time.monotonic())
        time.sleep(5)

    # When it runs
    long_task.send()
    broker.join(long_task.queue_name, timeout=20_000)
    worker.join()

    # Then it ran once and the server never redelivered it
    assert len(runs) == 1
    assert broker.queue_stats(long_task.queue_name).redelivered == 0


def test_messages_delivered_too_often_without_ack_are_dead_lettered(make_broker):
    # Given a broker that allows one delivery without an ack
    broker = make_broker(max_deliveries=1, ack_wait=1.0)
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="poison")
    def poison():
        pass

    poison.send()

    # And a consumer that took the message and vanished without acking (a crashed worker)
    async def take_and_vanish(js):
        sub = await js.pull_subscribe_bind(DURABLE, stream=broker.names.stream("poison"))
        [msg] = await sub.fetch(1, timeout=5)
        await sub.unsubscribe()
        return msg.metadata.num_delivered

    assert nats_call(broker, take_and_vanish) == 1

    # When a worker gets the redelivery
    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while broker.get_queue_message_counts("poison")[2] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()

    # Then it is dead-lettered instead of run
    [letter] = nats_call(broker, lambda js: dead_letters.read(js, broker.names, "poison"))
    assert letter.reason == dead_letters.Reason.UNDELIVERABLE
    assert letter.deliveries == 2
    assert broker.get_queue_message_counts("poison") == (0, 0, 1)


def test_enqueue_without_a_server_fails_fast_with_a_connection_error(make_broker):
    # Given a broker pointed at a port where nothing listens
    broker = make_broker(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=1.0)
    message = Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={})

    # When I enqueue, then a connection error comes within a bounded time
    started = time.monotonic()
    with pytest.raises(ConnectionFailed):
        broker.enqueue(message)
    assert time.monotonic() - started < 5


def test_enqueue_during_an_outage_fails_then_recovers(make_broker, tmp_path):
    # Given a broker on its own server
    server = NatsServer(store_dir=tmp_path / "nats").start()
    try:
        broker = make_broker(url=server.url, publish_timeout=1.0, connect_timeout=1.0)
        message = Message(queue_name="outage", actor_name="a", args=(), kwargs={}, options={})
        broker.enqueue(message)

        # When the server goes away, enqueue raises a connection error within a bounded time
        server.stop()
        started = time.monotonic()
        with pytest.raises((ConnectionFailed, ConnectionClosed)):
            broker.enqueue(message)
        assert time.monotonic() - started < 5

        # And when it comes back on the same port, enqueue works again and nothing was lost
        server.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                broker.enqueue(message, msg_id="after-outage")
                break
            except (ConnectionFailed, ConnectionClosed):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert broker.get_queue_message_counts("outage")[0] >= 2
    finally:
        server.stop()


def test_delivered_messages_say_how_often_they_were_delivered(broker):
    @dramatiq.actor(queue_name="counted")
    def noop():
        pass

    noop.send()
    consumer = broker.consume("counted", prefetch=1, timeout=2000)
    message = next(consumer)
    assert isinstance(message, JetStreamMessage)
    assert (message.delivery_count, message.redelivered) == (1, False)
    consumer.requeue([message])
    again = next(consumer)
    assert (again.delivery_count, again.redelivered) == (2, True)
    consumer.ack(again)
    consumer.close()
