"""``threeport queues`` against a real nats-server: what an operator sees and changes."""

from __future__ import annotations

import json
import time
from typing import Optional

import dramatiq
import pytest
from typer.testing import CliRunner, Result

from cli import queues
from cli.local_servers import free_port
from cli.main import app
from workers.broker import JetStreamBroker


@pytest.fixture
def cli(nats_server, prefix):
    """Run ``threeport queues ...`` on the session server, under the test's prefix."""
    runner = CliRunner()

    def invoke(*args: str, input: Optional[str] = None, url: Optional[str] = None) -> Result:
        options = ["--nats-url", url or nats_server.url, "--prefix", prefix]
        # A wide terminal, so that table cells are never cut to fit.
        return runner.invoke(app, ["queues", *options, *args], input=input, env={"COLUMNS": "200"})

    return invoke


def send(queue: str, count: int, *, delay: Optional[int] = None) -> list[str]:
    """Send ``count`` messages to the actor of ``queue``; returns their message ids."""
    actor = actor_of(queue)
    return [actor.send_with_options(args=(n,), delay=delay).message_id for n in range(count)]


def actor_of(queue: str) -> dramatiq.Actor:
    """The test's actor on ``queue``, declared on first use (a name can be declared only once)."""
    name = f"work_on_{queue}"
    declared = dramatiq.get_broker().actors.get(name)
    if declared is not None:
        return declared

    @dramatiq.actor(queue_name=queue, actor_name=name)
    def work(n):
        pass

    return work


def bury(broker: JetStreamBroker, queue: str, *, count: int, error: str = "boom") -> None:
    """Dead-letter the next ``count`` messages of ``queue``, as a worker whose actor raised."""
    consumer = broker.consume(queue, prefetch=5, timeout=500)
    try:
        for _ in range(count):
            message = next_message(consumer)
            message.stuff_exception(ValueError(error))
            consumer.nack(message)
    finally:
        consumer.close()


def next_message(consumer, timeout: float = 5.0):
    """The next delivery; ``next()`` gives None each time the consumer's own timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message
    raise AssertionError("no message was delivered")


def test_list_shows_every_queue_with_its_counts(broker, cli):
    # Given a queue with three ready messages and one delayed,
    send("orders", 3)
    send("orders", 1, delay=60_000)
    # and a queue whose two messages were dead-lettered
    send("failing", 2)
    bury(broker, "failing", count=2)

    # When I list the queues as a table, with and without the verb
    bare, listed = cli(), cli("list")

    # Then both show both queues
    for result in (bare, listed):
        assert result.exit_code == 0, result.output
        assert "orders" in result.stdout and "failing" in result.stdout
        assert "IN FLIGHT" in result.stdout

    # And as JSON the counts are exact
    result = cli("-o", "json", "list")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"queue": "failing", "ready": 0, "delayed": 0, "in_flight": 0, "redelivered": 0, "dead": 2, "consumers": 0},
        {"queue": "orders", "ready": 3, "delayed": 1, "in_flight": 0, "redelivered": 0, "dead": 0, "consumers": 0},
    ]


def test_dead_shows_actor_arguments_and_error(broker, cli):
    # Given a dead letter with a short error and one with a very long error
    ids = send("failing", 2)
    bury(broker, "failing", count=1)
    bury(broker, "failing", count=1, error="x" * 300)

    # When I list the dead letters as a table
    result = cli("dead", "failing")

    # Then I see both by id, with their actor and error, the long one cut short
    assert result.exit_code == 0, result.output
    for message_id in ids:
        assert message_id in result.stdout
    assert "work_on_failing" in result.stdout
    assert "ValueError: boom" in result.stdout
    assert "x" * 100 not in result.stdout

    # And as JSON I get every field, with the whole error
    letters = json.loads(cli("-o", "json", "dead", "failing").stdout)
    assert [letter["message_id"] for letter in letters] == ids
    assert letters[0]["actor"] == "work_on_failing"
    assert letters[0]["args"] == [0]
    assert letters[0]["error"] == "ValueError: boom"
    assert letters[1]["error"] == "ValueError: " + "x" * 300

    # And --limit shows only the oldest
    oldest = json.loads(cli("-o", "json", "dead", "failing", "--limit", "1").stdout)
    assert [letter["message_id"] for letter in oldest] == ids[:1]


def test_retry_by_id_puts_the_message_back_and_reports_missing_ids(broker, cli):
    # Given two dead letters
    first, second = send("failing", 2)
    bury(broker, "failing", count=2)

    # When I retry the first one and an id that is not a dead letter
    result = cli("retry", "failing", first, "no-such-id")

    # Then the first is ready again and the second is still dead
    assert (broker.queue_stats("failing").ready, broker.queue_stats("failing").dead) == (1, 1)
    # And I am told what was retried and what was not found, with exit code 1
    assert result.exit_code == 1
    assert "Retried 1 dead letter " in result.stdout
    assert "no-such-id" in result.stderr


def test_retry_all_puts_every_dead_letter_back(broker, cli):
    # Given two dead letters
    ids = send("failing", 2)
    bury(broker, "failing", count=2)

    # When I retry all of them, asking for JSON
    result = cli("-o", "json", "retry", "failing", "--all")

    # Then both are ready again and the report names them
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)["retried"]) == sorted(ids)
    assert (broker.queue_stats("failing").ready, broker.queue_stats("failing").dead) == (2, 0)


@pytest.mark.parametrize("args", [[], ["--all", "some-id"]], ids=["neither", "both"])
def test_retry_needs_either_all_or_ids(cli, args):
    # When I retry without saying which dead letters, or saying it twice
    result = cli("retry", "failing", *args)

    # Then it is a usage error
    assert result.exit_code == 2
    assert "--all" in result.output


def test_purge_asks_first_and_declining_changes_nothing(broker, cli):
    # Given two ready messages
    send("orders", 2)

    # When I purge the queue and answer no
    result = cli("purge", "orders", input="n\n")

    # Then it aborts and both messages are still there
    assert result.exit_code == 1
    assert "Drop 2 messages" in result.stderr
    assert broker.queue_stats("orders").ready == 2


def test_purge_with_yes_drops_the_ready_messages(broker, cli):
    # Given three ready messages
    send("orders", 3)

    # When I purge the queue without being asked
    result = cli("purge", "orders", "--yes")

    # Then they are gone and I am told how many
    assert result.exit_code == 0, result.output
    assert "Dropped 3 messages" in result.stdout
    assert broker.queue_stats("orders").ready == 0


def test_purge_dead_drops_only_the_dead_letters(broker, cli):
    # Given two dead letters and then one ready message
    send("failing", 2)
    bury(broker, "failing", count=2)
    send("failing", 1)

    # When I purge the dead letters
    result = cli("-o", "json", "purge", "failing", "--dead", "-y")

    # Then the dead letters are gone and the ready message is not
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"queue": "failing", "dead": True, "purged": 2}
    assert (broker.queue_stats("failing").ready, broker.queue_stats("failing").dead) == (1, 0)


def test_unreachable_nats_is_one_line_and_exit_code_1(cli, monkeypatch):
    # Given a URL where no server listens (and a short wait for one, to keep the test fast)
    monkeypatch.setattr(queues, "CONNECT_TIMEOUT", 1.0)
    url = f"nats://127.0.0.1:{free_port()}"

    # When I list the queues there (a trailing comma in the list of servers is no server of its own)
    result = cli("list", url=f"{url},")

    # Then I get one line naming the server and why, and no traceback
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot connect to NATS at {url}: [Errno 111] Connection refused"
    ]
    assert "Traceback" not in result.output


def test_invalid_queue_name_is_one_line_and_exit_code_1(cli):
    # When I ask for the dead letters of a queue name NATS cannot hold
    result = cli("dead", "no spaces")

    # Then I get one line saying so
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid queue name 'no spaces'")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [["dead", "ordrs"], ["retry", "ordrs", "--all"], ["purge", "ordrs", "--yes"]],
    ids=["dead", "retry", "purge"],
)
def test_a_queue_that_does_not_exist_is_an_error_naming_the_queues_there(broker, cli, prefix, args):
    # Given one queue, with a message in it
    send("orders", 1)

    # When I name a queue with a typo
    result = cli(*args)

    # Then I am told there is no such queue and which there are, instead of "0 dead letters" or "dropped 0"
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no queue named 'ordrs' under prefix '{prefix}' (queues: orders)"
    ]
    assert result.stdout == ""
