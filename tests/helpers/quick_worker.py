"""``threeport worker`` in a process of its own, with timings short enough for a test.

usage: python -m tests.helpers.quick_worker [threeport worker options]
(environment: DATABASE_URL, NATS_URL, THREEPORT_PREFIX, THREEPORT_ENCRYPTION_KEY)

It runs the very code of ``python -m cli.main worker``; only the timings
that make recovering from a killed worker take half a minute are shortened:
the object lock's TTL and the broker's ack wait (30 s each, here 3 s: a
killed worker's message is redelivered and its lock expires within seconds),
and the EKS reconciler's poll delay (30 s, here 0.2 s).
"""

from __future__ import annotations

import functools
import sys

import tasks.actor
import tasks.aws_eks
import workers.broker
from cli.main import main

LOCK_TTL = 3.0
ACK_WAIT = 3.0
POLL_DELAY = 0.2


class _QuickBroker(workers.broker.JetStreamBroker):
    def __init__(self, *args, **options) -> None:
        options.setdefault("ack_wait", ACK_WAIT)
        super().__init__(*args, **options)


# cli.worker imports both when a worker process starts (with --processes 1, this process).
tasks.actor.declare_actors = functools.partial(tasks.actor.declare_actors, lock_ttl=LOCK_TTL)
workers.broker.JetStreamBroker = _QuickBroker
tasks.aws_eks.POLL_DELAY = POLL_DELAY

if __name__ == "__main__":
    sys.argv = ["threeport", "worker", *sys.argv[1:]]
    main()
