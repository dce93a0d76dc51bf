"""Per-object locks on a real JetStream KV bucket, across threads and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from workers.errors import InvalidName, LockError, LockHeld, LockLost
from workers.locks import LockManager

from .reconciling import wait_for

ROOT = Path(__file__).resolve().parent.parent
CONTENDER = [sys.executable, str(ROOT / "tests" / "helpers" / "lock_contender.py")]


@pytest.fixture
def bucket() -> str:
    return "locks" + uuid.uuid4().hex[:8]


@pytest.fixture
def locks(nats_server, bucket):
    manager = LockManager(nats_server.url, bucket=bucket)
    yield manager
    manager.delete_bucket()
    manager.close()


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CONTENDER, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_a_held_lock_cannot_be_taken_until_released(locks):
    # Given a lock held by one caller
    lease = locks.acquire("workload-instance.1", ttl=30)
    assert lease is not None

    # When another caller asks for it, then it is refused
    assert locks.acquire("workload-instance.1") is None
    with pytest.raises(LockHeld):
        with locks.hold("workload-instance.1"):
            pass

    # And once released it can be taken again, with a higher revision (fencing token)
    assert lease.release() is True
    again = locks.acquire("workload-instance.1")
    assert again is not None and again.revision > lease.revision
    again.release()


def test_renewal_keeps_the_lock_and_moves_the_revision(locks):
    # Given a lock with a one-second TTL
    lease = locks.acquire("aws-account.7", ttl=1)
    first = lease.revision

    # When it is renewed for longer than that TTL
    for _ in range(3):
        time.sleep(0.6)
        lease.renew(ttl=2)

    # Then nobody could take it meanwhile and its revision grew with each renewal
    assert locks.acquire("aws-account.7") is None
    assert lease.revision > first
    assert locks.holder_of("aws-account.7")["revision"] == lease.revision
    assert lease.release()
    assert locks.holder_of("aws-account.7") is None


def test_a_stale_holder_can_neither_renew_nor_release_the_new_holders_lock(locks):
    # Given a holder whose lease expired, and a new holder
    stale = locks.acquire("gateway-instance.3", ttl=1)
    deadline = time.monotonic() + 10
    while (fresh := locks.acquire("gateway-instance.3", ttl=30)) is None:
        assert time.monotonic() < deadline, "the expired lock never freed"
        time.sleep(0.1)

    # When the stale holder wakes up, then it cannot renew
    with pytest.raises(LockLost):
        stale.renew()
    # And releasing does nothing to the new holder's lock
    assert stale.release() is False
    assert locks.holder_of("gateway-instance.3")["revision"] == fresh.revision
    assert locks.acquire("gateway-instance.3") is None
    fresh.release()


def test_a_lock_let_go_without_waiting_is_free_for_the_next_holder(locks):
    # Given a lock with a long TTL
    lease = locks.acquire("workload-instance.9", ttl=30)

    # When its holder lets it go, without waiting for the server's answer
    lease.let_go()

    # Then another caller takes it at once, not after the TTL, with a higher revision
    started = time.monotonic()
    again = wait_for(lambda: locks.acquire("workload-instance.9", ttl=30), timeout=5)
    assert again is not None and again.revision > lease.revision
    assert time.monotonic() - started < 5
    # And letting go again, or releasing afterwards, does nothing to the new holder's lock
    lease.let_go()
    assert lease.release() is False
    assert locks.holder_of("workload-instance.9")["revision"] == again.revision
    again.release()


def test_a_stale_holder_letting_go_leaves_the_new_holders_lock_alone(locks):
    # Given a holder whose lease expired, and a new holder
    stale = locks.acquire("gateway-instance.4", ttl=1)
    fresh = wait_for(lambda: locks.acquire("gateway-instance.4", ttl=30), timeout=10)
    assert fresh is not None

    # When the stale holder lets go
    stale.let_go()

    # Then the new holder still holds the lock (asked on the same connection, so after the let-go)
    assert locks.acquire("gateway-instance.4") is None
    assert locks.holder_of("gateway-instance.4")["revision"] == fresh.revision
    fresh.release()


def test_a_bucket_without_a_leader_yet_is_waited_for_right_after_it_was_made(nats_server, bucket, locks):
    # Given a lock manager that has just made its bucket, which then has no stream for a moment
    # (as a bucket just made on a cluster has no leader until one is elected)
    assert locks.acquire("workload.1") is not None
    other = LockManager(nats_server.url, bucket=bucket)
    other.delete_bucket()
    remade = threading.Timer(0.5, lambda: other.acquire("workload.2"))
    remade.start()
    try:
        # When it takes another lock, then it waits for the bucket and takes it
        started = time.monotonic()
        assert locks.acquire("workload.3") is not None
        assert time.monotonic() - started >= 0.3
    finally:
        remade.join()
        other.close()


def test_a_bucket_that_stops_answering_later_is_an_error_at_once(nats_server, bucket):
    # Given a lock manager whose bucket was made more than its timeout ago
    locks = LockManager(nats_server.url, bucket=bucket, timeout=1.0)
    try:
        assert locks.acquire("workload.1") is not None
        time.sleep(1.1)
        # When the bucket's stream is gone (an outage), then a lock request says so without waiting
        LockManager(nats_server.url, bucket=bucket).delete_bucket()
        started = time.monotonic()
        with pytest.raises(LockError, match="JetStream did not answer"):
            locks.acquire("workload.2")
        assert time.monotonic() - started < 0.5
    finally:
        locks.close()


def test_threads_never_hold_one_lock_at_once(locks):
    # Given eight threads competing for one key
    inside = []
    overlaps = []
    done = []

    def compete():
        won = 0
        while won < 10:
            lease = locks.acquire("kind.shared", ttl=5)
            if lease is None:
                time.sleep(0.001)
                continue
            with lease:
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(1)
                time.sleep(0.001)
                inside.pop()
            won += 1
        done.append(1)

    threads = [threading.Thread(target=compete) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    # Then all eighty turns happened, never two at once
    assert len(done) == 8
    assert overlaps == []


def test_processes_never_hold_one_lock_at_once(nats_server, bucket, tmp_path, locks):
    # Given three processes competing for one key, each logging when it enters and leaves
    log = tmp_path / "turns.log"
    procs = [spawn(nats_server.url, bucket, "kind.contended", str(log), "15") for _ in range(3)]
    for proc in procs:
        assert proc.wait(120) == 0

    # Then the log alternates enter/exit of one process at a time, 45 turns in all
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 90
    for enter, leave in zip(lines[::2], lines[1::2]):
        assert enter.startswith("enter ")
        assert leave == "exit " + enter.split()[1]
    assert len({line.split()[1] for line in lines}) == 3


def test_a_killed_holders_lock_frees_itself_after_its_ttl(nats_server, bucket, locks):
    # Given a process holding a lock with a 2 s TTL
    holder = spawn(nats_server.url, bucket, "kind.crashy", "hold", "2")
    assert holder.stdout.readline().startswith("held ")

    # When it is killed with SIGKILL
    holder.kill()
    holder.wait()
    killed = time.monotonic()

    # Then the lock is still taken at first, and free once the TTL has passed
    assert locks.acquire("kind.crashy") is None
    while (lease := locks.acquire("kind.crashy")) is None:
        assert time.monotonic() - killed < 10, "a dead holder's lock never freed"
        time.sleep(0.1)
    assert time.monotonic() - killed < 5
    lease.release()


def test_bad_keys_and_ttls_are_refused_with_clear_errors(locks):
    with pytest.raises(InvalidName):
        locks.acquire("has space")
    with pytest.raises(InvalidName):
        locks.acquire("trailing.")
    with pytest.raises(ValueError):
        locks.acquire("kind.ok", ttl=0.5)


def test_a_released_key_leaves_nothing_behind_after_a_second(locks):
    # Given a lock taken and released
    locks.acquire("domain-name.9", ttl=30).release()

    async def keys_stored() -> int:
        js = await locks._js()
        info = await js.stream_info(f"KV_{locks.bucket}", subjects_filter=f"$KV.{locks.bucket}.>")
        return sum((info.state.subjects or {}).values())

    # Then nobody holds it, and its release marker is the one message left
    assert locks.holder_of("domain-name.9") is None
    assert locks._call(keys_stored, "count") == 1
    # And the marker expires by itself, so the bucket does not grow with every key ever locked
    deadline = time.monotonic() + 10
    while locks._call(keys_stored, "count"):
        assert time.monotonic() < deadline, "the release marker never expired"
        time.sleep(0.2)
    assert locks.acquire("domain-name.9") is not None
