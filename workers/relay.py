"""The outbox relay and the resync sweep, run by one worker process at a time.

The relay publishes outbox rows the API's fast path left behind (older than
``older_than`` seconds) through :func:`workers.outbox_relay.publish_rows`,
so a row published by both is enqueued once. The sweep re-enqueues objects
left unreconciled for ``resync_after`` seconds, once per ``resync_interval``:
its ``Nats-Msg-Id`` names the object, generation and time window, so two
sweeps in one window enqueue it once. Only the holder of the lock
``relay.leader`` does either, so many worker processes may run a relay.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from dramatiq.message import Message

from models import registry, store

from .broker import JetStreamBroker
from .errors import LockError, LockLost
from .locks import Lease, LockManager
from .outbox_relay import publish_rows

__all__ = ["Relay", "LEADER_KEY"]

logger = logging.getLogger(__name__)

#: The lock whose holder is the one active relay.
LEADER_KEY = "relay.leader"
LEADER_TTL = 10.0
#: Seconds between two reminders that relay rounds keep failing (the first failure is logged at once).
OUTAGE_REMINDER = 60.0


class Relay:
    """Publishes leftover outbox rows every ``interval`` seconds and resyncs stale objects.

    Parameters:
      interval: seconds between two rounds of the background loop.
      older_than: age (seconds) of an outbox row the fast path is deemed to have missed.
      batch: most outbox rows (and objects per kind) handled per round.
      resync_after: seconds an object may stay unreconciled before the sweep re-enqueues it.
      resync_interval: seconds between two sweeps (and the de-duplication window of a sweep's messages).
      locks: where the leader lock lives (the bucket ``locks`` on the broker's connection by default).
    """

    def __init__(
        self,
        broker: JetStreamBroker,
        *,
        interval: float = 1.0,
        older_than: float = 2.0,
        batch: int = 500,
        resync_after: float = 30.0,
        resync_interval: float = 30.0,
        locks: Optional[LockManager] = None,
    ) -> None:
        self.broker = broker
        self.interval = interval
        self.older_than = older_than
        self.batch = batch
        self.resync_after = resync_after
        self.resync_interval = resync_interval
        self.locks = locks or LockManager(connection=broker.connection, replicas=broker.replicas)
        self._lease: Optional[Lease] = None
        self._last_sweep = 0.0
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # One round ---------------------------------------------------------------------
    def run_once(self) -> int:
        """Publish the outbox rows older than ``older_than``; how many were published."""
        return publish_rows(self.broker, store.pending_outbox(older_than_seconds=self.older_than, limit=self.batch))

    def sweep_once(self, older_than_seconds: Optional[float] = None) -> int:
        """Re-enqueue every object unreconciled for ``older_than_seconds``; how many were enqueued."""
        older_than = self.resync_after if older_than_seconds is None else older_than_seconds
        window = int(time.time() // self.resync_interval)
        enqueued = 0
        for model in registry.reconciled_kinds():
            objects = store.unreconciled(model, older_than_seconds=older_than, limit=self.batch)
            if not objects:
                continue
            messages = [_message(model, obj) for obj in objects]
            msg_ids = [f"resync:{model.kind}:{obj.id}:{obj.generation}:{window}" for obj in objects]
            self.broker.enqueue_many(messages, msg_ids=msg_ids)
            enqueued += len(messages)
        self._last_sweep = time.monotonic()
        return enqueued

    def tick(self) -> Optional[tuple[int, int]]:
        """One round of the loop: (rows published, objects resynced), or None when another relay leads."""
        if not self.lead():
            return None
        published = self.run_once()
        swept = self.sweep_once() if time.monotonic() - self._last_sweep >= self.resync_interval else 0
        return published, swept

    def lead(self) -> bool:
        """Take or keep the leader lock; whether this relay is the active one."""
        if self._lease is not None:
            try:
                self._lease.renew()
                return True
            except LockLost:
                logger.warning("The relay lost its leadership.")
                self._lease = None
        self._lease = self.locks.acquire(LEADER_KEY, LEADER_TTL)
        return self._lease is not None

    # Background loop --------------------------------------------------------------
    def start(self) -> "Relay":
        """Run rounds every ``interval`` seconds in a background thread."""
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name="outbox relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and give up the leadership."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._lease is not None:
            try:
                self._lease.release()
            except LockError:
                logger.warning("Could not release the relay's leadership; it expires by itself.", exc_info=True)
            self._lease = None

    def _loop(self) -> None:
        """Rounds until stopped; an outage is logged when it starts, every ``OUTAGE_REMINDER`` s, and when it ends."""
        failed, said = 0, 0.0
        while not self._stopped.is_set():
            try:
                self.tick()
            except Exception as exc:  # a database or NATS outage: try again next round
                failed += 1
                if failed == 1:
                    logger.error("Relay round failed; retrying every %gs: %s", self.interval, exc, exc_info=True)
                    said = time.monotonic()
                elif time.monotonic() - said >= OUTAGE_REMINDER:
                    logger.error("Relay rounds still failing (%d in a row): %s", failed, exc)
                    said = time.monotonic()
            else:
                if failed:
                    logger.warning("Relay rounds succeed again after %d failed.", failed)
                failed = 0
            self._stopped.wait(self.interval)


def _message(model, obj) -> Message:
    kwargs = {"kind": model.kind, "object_id": str(obj.id), "generation": obj.generation}
    return Message(queue_name=model.queue, actor_name=model.actor, args=(), kwargs=kwargs, options={})
