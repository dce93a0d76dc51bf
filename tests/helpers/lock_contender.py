"""A separate process that competes for one lock (used by tests/test_locks.py).

usage: lock_contender.py URL BUCKET KEY LOGFILE ROUNDS   -> competes ROUNDS times
       lock_contender.py URL BUCKET KEY hold TTL          -> takes the lock, says so, sleeps forever
"""

import os
import sys
import time

from workers.locks import LockManager


def compete(locks: LockManager, key: str, log: str, rounds: int) -> None:
    won = 0
    while won < rounds:
        lease = locks.acquire(key, ttl=5)
        if lease is None:
            time.sleep(0.002)
            continue
        with lease:
            with open(log, "a") as f:
                f.write(f"enter {os.getpid()}\n")
            time.sleep(0.005)
            with open(log, "a") as f:
                f.write(f"exit {os.getpid()}\n")
        won += 1


def hold(locks: LockManager, key: str, ttl: float) -> None:
    lease = locks.acquire(key, ttl=ttl)
    print(f"held {lease.revision}" if lease else "busy", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    url, bucket, key, mode, arg = sys.argv[1:6]
    manager = LockManager(url, bucket=bucket)
    if mode == "hold":
        hold(manager, key, float(arg))
    else:
        compete(manager, key, mode, int(arg))
