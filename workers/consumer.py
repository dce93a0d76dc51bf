"""The consumer side of :class:`workers.broker.JetStreamBroker`.

A consumer binds to the queue's durable pull consumer and keeps a small
buffer filled from a task on the loop thread, so Dramatiq's consumer thread
only waits on a local queue. The number of messages it holds, buffered or
being processed, never exceeds ``prefetch``. While it holds a message it
sends ``in_progress`` heartbeats, so long actors are not redelivered; when it
dies (SIGKILL) the heartbeats stop and the server redelivers after
``ack_wait``. A message delivered ``max_deliveries`` times without an ack, or
one that is not a Dramatiq message, is dead-lettered here, because past
JetStream's own ``max_deliver`` it would sit in the stream forever.
"""

from __future__ import annotations

import asyncio
import collections
import math
import queue
import threading
import time
import uuid
from typing import TYPE_CHECKING, Iterable, Optional

import nats.errors
import nats.js.errors
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed, ConnectionFailed, DecodeError
from dramatiq.logging import get_logger
from dramatiq.message import Message
from nats.aio.msg import Msg

from . import bridge, dead_letters
from .dead_letters import Reason
from .naming import DURABLE

if TYPE_CHECKING:
    from .broker import JetStreamBroker

__all__ = ["JetStreamConsumer", "JetStreamMessage"]

#: Seconds one pull request waits on the server for messages; closing waits
#: for the last one to end, so that nothing it brings is left unreturned.
PULL_WAIT = 1.0
#: Set on delayed messages when the server has no message schedules (< 2.12);
#: consumers then hold such messages back with ``nak(delay)``.
ETA_HEADER = "Threeport-Eta"


class JetStreamMessage(MessageProxy):
    """A delivered message; ``delivery_count`` counts this delivery too."""

    def __init__(self, message: Message, delivery: Msg) -> None:
        super().__init__(message)
        self._delivery = delivery
        self.seq = delivery.metadata.sequence.stream
        self.delivery_count = delivery.metadata.num_delivered
        self.redelivered = self.delivery_count > 1
        #: Milliseconds; set when a retry of this message could not be enqueued,
        #: turning its ack into a redelivery after that delay.
        self.redeliver_after: Optional[int] = None


class JetStreamConsumer(Consumer):
    """Iterates over one queue's messages for one Dramatiq consumer thread."""

    def __init__(self, broker: JetStreamBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self.prefetch = max(1, prefetch)
        #: The pull loop pulls again only once a quarter of the prefetch is free: fewer, larger pulls.
        self._low_water = max(1, self.prefetch // 4)
        self.timeout = timeout / 1000
        self.id = uuid.uuid4().hex[:16]
        self.logger = get_logger(__name__, type(self))
        self._ready: queue.Queue[JetStreamMessage] = queue.Queue()
        # Loop-thread state: deliveries we hold (buffered or at a worker), by stream sequence.
        self._held: dict[int, Msg] = {}
        self._room: Optional[asyncio.Event] = None
        self._tasks: list[asyncio.Task] = []
        self._sub = None
        self._error: Optional[str] = None
        self._closed = False
        self._stopping = False
        # When the pull loop last came round, and whether it waits for room (busy, not stuck).
        self._pulled_at = time.monotonic()
        self._full = False
        # Acks queued by worker threads, sent by the loop thread in batches.
        self._settling: collections.deque[JetStreamMessage] = collections.deque()
        self._settling_lock = threading.Lock()
        self._drain_scheduled = False
        self._run(self._start, "start consuming")

    # Dramatiq's consumer interface (consumer and worker threads) ---------------------
    def __next__(self) -> Optional[JetStreamMessage]:
        try:
            return self._ready.get(timeout=self.timeout)
        except queue.Empty:
            if self._error:
                raise ConnectionClosed(self._error) from None
            return None

    def ack(self, message: JetStreamMessage) -> None:
        """Acknowledge; sent at once on this thread's own connection unless the broker confirms acks.

        A fire-and-forget ack that never reaches the server only means a
        redelivery after ``ack_wait``, which every actor must tolerate anyway.
        Sent here (:mod:`workers.direct`) it costs one write, where handing
        it to the loop thread cost a wake-up of that thread and a task.
        """
        if self.broker.confirm_acks:
            self._run(lambda: self._settle(message, confirm=True), f"ack {message.message_id}")
            return
        if message.redeliver_after is None:
            try:
                self.broker.connection.direct.publish(
                    message._delivery.reply, b"+ACK", timeout=self.broker.publish_timeout
                )
            except ConnectionFailed as exc:
                self.logger.warning("An ack was not sent (%s); the message will be redelivered.", exc)
            self._forget(message.seq)
            return
        self._settling.append(message)
        with self._settling_lock:
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        bridge.get_loop().loop.call_soon_threadsafe(self._drain_settling)

    def nack(self, message: JetStreamMessage) -> None:
        """Dead-letter the message with the error that failed it."""
        error = message._exception
        reason = f"{type(error).__name__}: {error}" if error is not None else "rejected"

        async def bury() -> None:
            js = await self.broker.connection.jetstream()
            await dead_letters.bury(
                js,
                self.broker.names,
                queue=self.queue_name,
                data=message.encode(),
                reason=Reason.FAILED,
                error=reason,
                delivery=message._delivery,
                timeout=self.broker.publish_timeout,
            )
            self._release(message.seq)

        self._run(bury, f"dead-letter {message.message_id}")

    def requeue(self, messages: Iterable[JetStreamMessage]) -> None:
        """Hand messages back for immediate redelivery (worker shutdown)."""
        messages = list(messages)
        if messages:
            self._run(lambda: self._hand_back(messages), "requeue")

    def stop_pulling(self) -> None:
        """Pull no more (the pull in progress ends by itself); what is held stays held until ack or close."""
        bridge.get_loop().loop.call_soon_threadsafe(self._end_pulls)

    def stalled_for(self) -> float:
        """Seconds the pull loop has not come round while it had room to pull (0 while it waits for room).

        A fetch ends at least every ``PULL_WAIT`` seconds, messages or not; a
        loop that ended (an error, a stop) has stalled for ever.
        """
        pull = self._tasks[0] if self._tasks else None
        if pull is not None and pull.done():
            return float("inf")
        return 0.0 if self._full else time.monotonic() - self._pulled_at

    def _end_pulls(self) -> None:
        self._stopping = True
        if self._room is not None:
            self._room.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        unprocessed = []
        while True:
            try:
                unprocessed.append(self._ready.get_nowait())
            except queue.Empty:
                break
        self._run(lambda: self._stop(unprocessed), "close consumer")

    # Loop thread ---------------------------------------------------------------------
    def _run(self, fn, doing: str) -> None:
        self.broker.connection.run(fn, doing=f"{doing} on {self.queue_name!r}")

    def _drain_settling(self) -> None:
        """Send every queued ack in one loop pass (many acks, one wake-up)."""
        with self._settling_lock:
            self._drain_scheduled = False
        while self._settling:
            message = self._settling.popleft()
            bridge.drive(self._settle(message, confirm=False)).add_done_callback(self._log_settle_failure)

    async def _settle(self, message: JetStreamMessage, *, confirm: bool) -> None:
        delivery = message._delivery
        try:
            if message.redeliver_after is not None:
                await delivery.nak(delay=message.redeliver_after / 1000)
            elif confirm:
                await delivery.ack_sync(timeout=self.broker.publish_timeout)
            else:
                await delivery.ack()
        finally:
            self._release(message.seq)

    def _log_settle_failure(self, outcome: asyncio.Future) -> None:
        if not outcome.cancelled() and outcome.exception() is not None:
            self.logger.warning("An ack was not sent (%s); the message will be redelivered.", outcome.exception())

    async def _start(self) -> None:
        broker = self.broker
        js = await broker.connection.jetstream()
        broker._ensured.discard(self.queue_name)  # a restarted consumer re-checks its stream
        await broker.ensure_queue(self.queue_name)
        self._sub = await js.pull_subscribe_bind(DURABLE, stream=broker.names.stream(self.queue_name))
        self._room = asyncio.Event()
        self._room.set()
        await self._announce()
        self._tasks = [asyncio.ensure_future(self._pull()), asyncio.ensure_future(self._heartbeat())]

    def _release(self, seq: int) -> None:
        self._held.pop(seq, None)
        if self._room is not None:
            self._room.set()

    def _forget(self, seq: int) -> None:
        """``_release`` from a Dramatiq thread: wakes the loop thread only if the pull loop waits for room.

        And only once there is room enough for it to pull: under a backlog a
        wake-up per ack would mostly find the loop going back to wait.
        """
        self._held.pop(seq, None)
        # Read after the pop; the pull loop says it waits before counting again (see _pull).
        if self._full and self.prefetch - len(self._held) >= self._low_water:
            bridge.get_loop().loop.call_soon_threadsafe(self._release, seq)

    async def _pull(self) -> None:
        """Fetch messages into the buffer while it has room, each as soon as it is there.

        A fetch that finds nothing waiting blocks on the server until its
        whole batch has come (or PULL_WAIT has passed), so a batch larger than
        what waits would hold early messages back for up to PULL_WAIT. Each
        fetch therefore asks for at most what the last message said was still
        pending after it (``num_pending``), and for one when nothing was:
        large pulls under a backlog, no wait at a trickle.
        """
        assert self._sub is not None and self._room is not None
        low_water = self._low_water
        pending = 0  # messages the server said were waiting after the last one fetched
        while not self._stopping:
            self._pulled_at = time.monotonic()
            room = self.prefetch - len(self._held)
            if room < low_water:
                self._room.clear()
                self._full = True
                if self.prefetch - len(self._held) < low_water:  # no ack came in meanwhile (_forget)
                    await self._room.wait()
                self._full = False
                continue
            try:
                deliveries = await self._sub.fetch(max(1, min(room, pending)), timeout=PULL_WAIT)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                pending = 0
                continue
            except nats.errors.ConnectionClosedError:
                self._error = "the NATS connection is closed"
                return
            except nats.js.errors.APIError as exc:
                self._error = f"pulling from {self.queue_name!r} failed: {exc}"
                return
            pending = deliveries[-1].metadata.num_pending if deliveries else 0
            for delivery in deliveries:
                await self._accept(delivery)

    async def _accept(self, delivery: Msg) -> None:
        broker = self.broker
        deliveries = delivery.metadata.num_delivered
        try:
            if deliveries > broker.max_deliveries:
                await self._bury(
                    delivery,
                    Reason.UNDELIVERABLE,
                    f"delivered {deliveries} times without an ack (worker crashed or exceeded ack_wait)",
                )
                return
            eta = (delivery.headers or {}).get(ETA_HEADER)
            if eta is not None and int(eta) > current_millis():
                await delivery.nak(delay=(int(eta) - current_millis()) / 1000)
                return
            try:
                message = Message.decode(delivery.data)
            except DecodeError as exc:
                await self._bury(delivery, Reason.UNDECODABLE, f"cannot decode: {exc}")
                return
        except nats.errors.Error:
            self.logger.warning("Could not settle delivery %s; it will be redelivered.", delivery.reply, exc_info=True)
            return
        proxy = JetStreamMessage(message, delivery)
        self._held[proxy.seq] = delivery
        self._ready.put(proxy)

    async def _bury(self, delivery: Msg, reason: str, error: str) -> None:
        self.logger.error("Dead-lettering a message of %r: %s.", self.queue_name, error)
        js = await self.broker.connection.jetstream()
        await dead_letters.bury(
            js,
            self.broker.names,
            queue=self.queue_name,
            data=delivery.data,
            reason=reason,
            error=error,
            delivery=delivery,
            timeout=self.broker.publish_timeout,
        )

    async def _heartbeat(self) -> None:
        """Keep held deliveries from being redelivered, and say we are here."""
        interval = max(0.5, self.broker.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            for delivery in list(self._held.values()):
                try:
                    await delivery.in_progress()
                except nats.errors.Error:
                    self.logger.debug("in_progress failed for %s", delivery.reply, exc_info=True)
            try:
                await self._announce()
            except Exception:  # presence is informational; never let it stop heartbeats
                self.logger.debug("Presence update failed.", exc_info=True)
            if time.monotonic() - started > interval:
                self.logger.warning("Heartbeats for %d messages took longer than %.1fs.", len(self._held), interval)

    async def _announce(self) -> None:
        js = await self.broker.connection.jetstream()
        ttl = math.ceil(max(0.5, self.broker.ack_wait / 3) * 3) + 1
        await js.publish(
            self.broker.names.presence_subject(self.queue_name, self.id),
            b"",
            timeout=self.broker.publish_timeout,
            msg_ttl=ttl,
        )

    async def _hand_back(self, messages: list[JetStreamMessage]) -> None:
        for message in messages:
            try:
                await message._delivery.nak()
            except nats.errors.MsgAlreadyAckdError:
                pass
            self._release(message.seq)

    async def _stop(self, unprocessed: list[JetStreamMessage]) -> None:
        # Let the pull in progress end by itself (at most PULL_WAIT): a cancelled
        # pull request stays open on the server and would strand what it brings.
        self._stopping = True
        pull, heartbeat = self._tasks or (None, None)
        if self._room is not None:
            self._room.set()
        if heartbeat is not None:
            heartbeat.cancel()
        if pull is not None:
            try:
                await asyncio.wait_for(pull, PULL_WAIT + 1)
            except (asyncio.TimeoutError, Exception):
                pass
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._ready.empty():  # accepted while we were stopping
            unprocessed.append(self._ready.get_nowait())
        await self._hand_back(unprocessed)
        if self._sub is not None:
            # Deliveries that reached our inbox after the last fetch: hand them back too.
            pending = self._sub._sub._pending_queue
            while not pending.empty():
                delivery = pending.get_nowait()
                if delivery.reply and delivery.reply.startswith("$JS.ACK"):
                    await delivery.nak()
            await self._sub.unsubscribe()
        nc = await self.broker.connection.client()
        await nc.flush()
        js = await self.broker.connection.jetstream()
        await js.purge_stream(
            self.broker.names.presence_stream,
            subject=self.broker.names.presence_subject(self.queue_name, self.id),
        )
