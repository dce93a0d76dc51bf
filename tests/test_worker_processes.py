"""Worker processes sharing queues on a real nats-server: sharing, crashes."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

import dramatiq
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKER = [sys.executable, str(ROOT / "tests" / "helpers" / "worker_process.py")]


@pytest.fixture
def start_worker(nats_server, prefix):
    procs: list[subprocess.Popen] = []

    def start(queue: str, log: Path, ack_wait: float = 2.0) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*WORKER, nats_server.url, prefix, queue, str(log), str(ack_wait)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:  # stuck in an actor: do not leave it behind
                proc.kill()
                proc.wait()


def declare_record(queue: str):
    """The sending side of the workers' ``record`` actor."""

    def record(n, hang_marker=None):  # runs only in the worker processes
        raise AssertionError("not run here")

    return dramatiq.actor(record, actor_name="record", queue_name=queue)


def read_log(log: Path) -> list[tuple[str, int, int]]:
    if not log.exists():
        return []
    return [(w, int(pid), int(n)) for w, pid, n in (line.split() for line in log.read_text().splitlines())]


def wait_for_done(log: Path, count: int, timeout: float) -> list[tuple[str, int, int]]:
    deadline = time.monotonic() + timeout
    while True:
        entries = read_log(log)
        if len({n for w, _, n in entries if w == "done"}) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_two_worker_processes_share_a_queue_and_run_each_message_once(broker, start_worker, tmp_path):
    # Given two worker processes on one queue
    log = tmp_path / "work.log"
    first = start_worker("shared", log)
    second = start_worker("shared", log)
    record = declare_record("shared")

    # When 300 messages are sent
    for n in range(300):
        record.send(n)

    # Then every message is done exactly once, and both processes did some of them
    entries = wait_for_done(log, 300, timeout=60)
    done = collections.Counter(n for w, _, n in entries if w == "done")
    assert sorted(done) == list(range(300))
    assert set(done.values()) == {1}
    assert {pid for w, pid, _ in entries if w == "done"} == {first.pid, second.pid}
    # And the queue is empty afterwards, with nothing in flight or dead
    broker.join("shared", timeout=10_000)
    assert broker.get_queue_message_counts("shared") == (0, 0, 0)


def test_a_worker_killed_mid_message_loses_nothing(broker, start_worker, tmp_path):
    # Given a worker process with a 2 s ack wait
    log = tmp_path / "work.log"
    marker = tmp_path / "hang-once"
    doomed = start_worker("crashy", log, ack_wait=2.0)
    record = declare_record("crashy")

    # And a message that hangs on its first delivery, among fifty others
    record.send(0, hang_marker=str(marker))
    for n in range(1, 51):
        record.send(n)
    deadline = time.monotonic() + 30
    while ("start", doomed.pid, 0) not in read_log(log):
        assert time.monotonic() < deadline, "the hanging message never started"
        time.sleep(0.05)

    # When that worker is killed with SIGKILL mid-message and another takes over
    doomed.kill()
    doomed.wait()
    survivor = start_worker("crashy", log, ack_wait=2.0)

    # Then every message is done, the interrupted one by the survivor after redelivery
    entries = wait_for_done(log, 51, timeout=60)
    done = collections.Counter(n for w, _, n in entries if w == "done")
    assert sorted(done) == list(range(51))
    assert ("done", survivor.pid, 0) in entries
    assert ("done", doomed.pid, 0) not in entries
    broker.join("crashy", timeout=10_000)
    assert broker.get_queue_message_counts("crashy") == (0, 0, 0)
