"""A Dramatiq broker on NATS JetStream.

Each queue is a file-stored work-queue stream with one durable pull consumer
that every worker process on every host shares. An enqueue returns only
after the server's PubAck, under a ``Nats-Msg-Id`` unique to that enqueue, so
a re-publish inside the duplicate window is dropped. Delayed messages
(``delay=`` and retry backoff) are JetStream message schedules: the server
moves them onto the queue at their time, so no worker holds them unacked in
memory. Dead letters go to one limits-retention stream, a subject per queue,
where they are kept for inspection and replay (:mod:`workers.admin`).

Publishes go out on the calling thread's own blocking connection
(:mod:`workers.direct`): a third of the CPU of handing each one to the
process's NATS loop and waiting for it there. Streams, consumers and counts
stay on the loop's nats-py client.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import nats.errors
import nats.js.errors
from dramatiq.broker import Broker, Consumer
from dramatiq.common import current_millis, q_name
from dramatiq.errors import BrokerError, ConnectionFailed, QueueJoinTimeout, QueueNotFound
from dramatiq.message import Message, get_encoder
from dramatiq.middleware import Middleware
from nats.js import api

from .connection import Connection, server_urls, translate_error
from .consumer import ETA_HEADER, JetStreamConsumer, JetStreamMessage
from .naming import DURABLE, Names, validate_queue_name
from .replicas import STREAM_NAME_IN_USE, raise_replicas

__all__ = ["JetStreamBroker", "QueueStats", "PartialEnqueue", "MSG_ID", "ETA_HEADER"]

MSG_ID = "Nats-Msg-Id"
BULK_ROUND = 1000  # publishes sent before their PubAcks are read
DAY = 86400.0


@dataclass(frozen=True)
class QueueStats:
    """What one queue holds right now."""

    queue: str
    #: Messages waiting to be delivered.
    ready: int
    #: Messages scheduled for later (delays and retry backoff).
    delayed: int
    #: Messages delivered to a worker and not acknowledged yet. JetStream also
    #: counts here messages handed back (``nak``) until they are delivered again.
    in_flight: int
    #: Messages delivered more than once (after a crash or an expired ack wait).
    redelivered: int
    #: Dead letters kept for this queue.
    dead: int
    #: Consumer instances (worker processes) currently attached to the queue.
    consumers: int


class PartialEnqueue(ConnectionFailed):
    """Raised when a bulk enqueue is confirmed for some messages and not others."""

    def __init__(
        self, enqueued: list[Message], failed: list[tuple[Message, BaseException]], failed_indexes: set[int]
    ) -> None:
        super().__init__(f"{len(failed)} of {len(enqueued) + len(failed)} messages were not confirmed")
        self.enqueued = enqueued
        self.failed = failed
        #: Positions, in the list given to ``enqueue_many``, of the messages not confirmed.
        self.failed_indexes = failed_indexes


class JetStreamBroker(Broker):
    """A Dramatiq broker whose queues are NATS JetStream streams.

    Parameters:
      url: one NATS URL, or several separated by commas.
      servers: a list of NATS URLs (instead of ``url``).
      middleware: Dramatiq middleware; the default set when omitted.
      prefix: namespace for every stream and subject this broker makes.
      replicas: replicas of the streams it creates (1 on one server, 3 on a 3-node cluster:
        ``THREEPORT_NATS_REPLICAS``); an existing stream's are raised to it, never lowered.
      ack_wait: seconds a delivered message may go without an ack or a
        heartbeat before the server redelivers it.
      max_deliveries: deliveries without an ack (crashes, expired ack
        waits) after which a message is dead-lettered instead.
      publish_timeout: seconds an enqueue waits for its PubAck.
      connect_timeout: seconds to wait for a NATS server on first use.
      dead_letter_max_age: seconds a dead letter is kept.
      dead_letter_max_messages: dead letters kept in all, oldest dropped first.
      confirm_acks: wait for the server to confirm each ack (``ack_sync``)
        instead of sending it and moving on.
      max_ack_pending: in-flight messages allowed per queue, across all workers.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        servers: Optional[Sequence[str]] = None,
        middleware: Optional[list[Middleware]] = None,
        prefix: str = "threeport",
        replicas: int = 1,
        ack_wait: float = 30.0,
        max_deliveries: int = 10,
        publish_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        dead_letter_max_age: float = 7 * DAY,
        dead_letter_max_messages: int = 1_000_000,
        confirm_acks: bool = False,
        max_ack_pending: int = 20_000,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(middleware=middleware)
        if url and servers:
            raise ValueError("pass either url or servers, not both")
        if ack_wait < 1:
            raise ValueError("ack_wait must be at least 1 second")
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        server_list = list(servers) if servers else server_urls(url)
        self.names = Names(prefix)
        self.connection = Connection(
            server_list, name=name, connect_timeout=connect_timeout, request_timeout=publish_timeout
        )
        self.replicas = replicas
        self.ack_wait = ack_wait
        self.max_deliveries = max_deliveries
        self.publish_timeout = publish_timeout
        self.dead_letter_max_age = dead_letter_max_age
        self.dead_letter_max_messages = dead_letter_max_messages
        self.confirm_acks = confirm_acks
        self.max_ack_pending = max_ack_pending
        self.queues: set[str] = set()
        self._ensured: set[str] = set()
        self._dead_ensured = False
        self._schedules: Optional[bool] = None
        self._consumers: weakref.WeakSet[JetStreamConsumer] = weakref.WeakSet()

    # Dramatiq's broker interface --------------------------------------------------
    @property
    def consumer_class(self) -> type[Consumer]:
        return JetStreamConsumer

    def declare_queue(self, queue_name: str) -> None:
        """Declare a queue; its stream is created on first use, not here."""
        canonical = q_name(queue_name)
        if canonical not in self.queues:
            validate_queue_name(canonical)
            self.emit_before("declare_queue", canonical)
            self.queues.add(canonical)
            self.emit_after("declare_queue", canonical)

    def get_declared_queues(self) -> set[str]:
        return self.queues.copy()

    def get_declared_delay_queues(self) -> set[str]:
        """Always empty: delays are server-side schedules, so workers need no delay-queue consumers."""
        return set()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        if queue_name not in self.queues:
            raise QueueNotFound(queue_name)
        consumer = self.consumer_class(self, queue_name, prefetch, timeout)
        self._consumers.add(consumer)
        return consumer

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        """Dramatiq's hook; on a worker's shutdown every consumer stops pulling at once.

        A worker then closes its consumers one after the other, and each waits
        for its pull in progress to end (see :meth:`JetStreamConsumer.close`):
        ending them all together, while the worker threads finish, makes
        stopping a worker take one pull wait rather than one per queue.
        """
        if signal == "worker_shutdown":
            for consumer in list(self._consumers):
                consumer.stop_pulling()
        super().emit_before(signal, *args, **kwargs)

    def enqueue(self, message: Message, *, delay: Optional[int] = None, msg_id: Optional[str] = None) -> Message:
        """Publish ``message`` and wait for the server's PubAck.

        Parameters:
          delay: milliseconds to hold the message back.
          msg_id: the ``Nats-Msg-Id`` (de-duplication key); a fresh one when omitted.

        Raises:
          ConnectionFailed: the PubAck did not come within ``publish_timeout``.
          ConnectionClosed: the connection is closed.
        """
        delivered = message
        message, delay = self._prepare(message, delay)
        self.emit_before("enqueue", message, delay)
        doing = f"enqueue on {message.queue_name!r}"
        try:
            self._ensure_queues({message.queue_name}, doing)
            reply = self.connection.direct.request(
                *self._publish_args(message, delay, msg_id), timeout=self.publish_timeout
            )
            _confirmed(reply, doing)
        except BrokerError:
            # A retry of a message being processed could not be published. Dramatiq
            # would ack the original and lose it; keep the delivery instead, so
            # that the ack becomes a delayed redelivery.
            if isinstance(delivered, JetStreamMessage):
                delivered.redeliver_after = delay or 0
            raise
        self.emit_after("enqueue", message, delay)
        return message

    def enqueue_many(
        self,
        messages: Sequence[Message],
        *,
        delay: Optional[int] = None,
        msg_ids: Optional[Sequence[str]] = None,
    ) -> list[Message]:
        """Publish many messages with pipelined PubAcks and wait for all of them.

        Raises :class:`PartialEnqueue`, naming what was and was not confirmed,
        when some PubAcks do not come.
        """
        if msg_ids is not None and len(msg_ids) != len(messages):
            raise ValueError("msg_ids must match messages one to one")
        prepared = [self._prepare(m, delay) for m in messages]
        for m, d in prepared:
            self.emit_before("enqueue", m, d)
        ids = list(msg_ids) if msg_ids is not None else [None] * len(prepared)
        self._ensure_queues({m.queue_name for m, _ in prepared}, "bulk enqueue")
        results: list[Optional[BaseException]] = []
        for start in range(0, len(prepared), BULK_ROUND):
            round_ = zip(prepared[start : start + BULK_ROUND], ids[start : start + BULK_ROUND])
            requests = [self._publish_args(message, delay, msg_id) for (message, delay), msg_id in round_]
            try:
                replies = self.connection.direct.request_many(
                    requests, timeout=self.publish_timeout + len(requests) / 1000
                )
            except ConnectionFailed as exc:
                if not results:  # nothing sent: the whole call failed
                    raise
                results.extend([exc] * (len(prepared) - len(results)))  # the rounds before stay confirmed
                break
            results.extend(_failure_of(reply) for reply in replies)
        enqueued, failed, failed_indexes = [], [], set()
        for index, ((m, d), error) in enumerate(zip(prepared, results)):
            if error is None:
                self.emit_after("enqueue", m, d)
                enqueued.append(m)
            else:
                failed.append((m, error))
                failed_indexes.add(index)
        if failed:
            raise PartialEnqueue(enqueued, failed, failed_indexes)
        return enqueued

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        """(ready, delayed, dead) for ``queue_name``, like the RabbitMQ broker."""
        stats = self.queue_stats(queue_name)
        return stats.ready, stats.delayed, stats.dead

    def queue_stats(self, queue_name: str) -> QueueStats:
        """Everything :class:`QueueStats` counts for one queue."""
        return self.connection.run(lambda: self._queue_stats(queue_name), doing=f"count {queue_name!r}")

    def flush(self, queue_name: str) -> None:
        """Drop every message of a queue: ready, delayed, in flight and dead."""
        self.connection.run(lambda: self._flush(queue_name), doing=f"flush {queue_name!r}")

    def flush_all(self) -> None:
        for queue_name in self.get_declared_queues():
            self.flush(queue_name)

    def join(
        self,
        queue_name: str,
        min_successes: int = 10,
        idle_time: int = 100,
        *,
        timeout: Optional[int] = None,
    ) -> None:
        """Wait until the queue has nothing ready, delayed or in flight.

        The queue must be seen empty ``min_successes`` times in a row,
        ``idle_time`` milliseconds apart. Unlike the RabbitMQ broker this
        also waits for unacknowledged messages.

        Raises:
          QueueJoinTimeout: when ``timeout`` milliseconds pass first.
        """
        deadline = timeout and time.monotonic() + timeout / 1000
        successes = 0
        while successes < min_successes:
            if deadline and time.monotonic() >= deadline:
                raise QueueJoinTimeout(queue_name)
            stats = self.queue_stats(queue_name)
            successes = successes + 1 if stats.ready + stats.delayed + stats.in_flight == 0 else 0
            time.sleep(idle_time / 1000)

    def close(self) -> None:
        self.connection.close_sync()

    # Preparing and publishing (calling thread) ----------------------------------------
    def _prepare(self, message: Message, delay: Optional[int]) -> tuple[Message, Optional[int]]:
        """Canonicalise the queue, and turn a foreign ``eta`` option into a delay."""
        queue_name = q_name(message.queue_name)
        if queue_name not in self.queues:
            self.declare_queue(queue_name)
        eta = message.options.get("eta")
        if eta is not None or queue_name != message.queue_name:
            options = {k: v for k, v in message.options.items() if k != "eta"}
            message = Message(
                queue_name=queue_name,
                actor_name=message.actor_name,
                args=message.args,
                kwargs=message.kwargs,
                options=options,
                message_id=message.message_id,
                message_timestamp=message.message_timestamp,
            )
            if delay is None and isinstance(eta, (int, float)):
                delay = max(0, int(eta - current_millis()))
        return message, (delay if delay and delay > 0 else None)

    def _publish_args(
        self, message: Message, delay: Optional[int], msg_id: Optional[str]
    ) -> tuple[str, bytes, dict[str, str]]:
        queue_name = message.queue_name
        headers = {MSG_ID: msg_id or uuid.uuid4().hex}
        subject = self.names.ready_subject(queue_name)
        if delay:
            due = current_millis() + delay
            if self._schedules:
                headers["Nats-Schedule"] = "@at " + _rfc3339(due)
                headers["Nats-Schedule-Target"] = subject
                subject = self.names.schedule_subject(queue_name, uuid.uuid4().hex)
            else:
                headers[ETA_HEADER] = str(due)
        return subject, _encode(message), headers

    def _ensure_queues(self, queue_names: set[str], doing: str) -> None:
        """Create the streams of the queues not yet created by this broker (through the loop thread)."""
        missing = queue_names - self._ensured

        async def ensure() -> None:
            for queue_name in missing:
                await self.ensure_queue(queue_name)

        if missing:
            self.connection.run(ensure, doing=doing)

    # Streams and consumers (loop thread) -----------------------------------------------
    async def ensure_queue(self, queue_name: str) -> None:
        """Create the queue's stream, its durable consumer and the dead-letter stream if missing."""
        if queue_name in self._ensured:
            return
        nc = await self.connection.client()
        js = await self.connection.jetstream()
        if self._schedules is None:
            version = nc.connected_server_version
            self._schedules = (version.major, version.minor) >= (2, 12)
        await _add_or_update_stream(
            js,
            api.StreamConfig(
                name=self.names.stream(queue_name),
                description=f"threeport queue {queue_name}",
                subjects=[self.names.ready_subject(queue_name), self.names.schedule_subjects(queue_name)],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                allow_msg_schedules=True if self._schedules else None,
                metadata={"threeport.queue": queue_name},
            ),
        )
        await js.add_consumer(
            self.names.stream(queue_name),
            api.ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=-1,
                max_ack_pending=self.max_ack_pending,
                filter_subject=self.names.ready_subject(queue_name),
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        await self._ensure_side_streams(js)
        self._ensured.add(queue_name)

    async def _ensure_side_streams(self, js) -> None:
        if self._dead_ensured:
            return
        await _add_or_update_stream(
            js,
            api.StreamConfig(
                name=self.names.dead_stream,
                description="threeport dead letters, one subject per queue",
                subjects=[self.names.dead_subjects],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.FILE,
                num_replicas=self.replicas,
                max_age=self.dead_letter_max_age,
                max_msgs=self.dead_letter_max_messages,
            ),
        )
        await _add_or_update_stream(
            js,
            api.StreamConfig(
                name=self.names.presence_stream,
                description="threeport consumer presence, one subject per consumer",
                subjects=[self.names.presence_subjects],
                retention=api.RetentionPolicy.LIMITS,
                storage=api.StorageType.MEMORY,
                num_replicas=self.replicas,
                max_msgs_per_subject=1,
                allow_msg_ttl=True,
                max_age=DAY,
            ),
        )
        self._dead_ensured = True

    async def _queue_stats(self, queue_name: str) -> QueueStats:
        js = await self.connection.jetstream()
        try:
            stream = await js.stream_info(self.names.stream(queue_name))
            consumer = await js.consumer_info(self.names.stream(queue_name), DURABLE)
        except nats.js.errors.NotFoundError:
            return QueueStats(queue_name, 0, 0, 0, 0, await self._count_dead(queue_name), 0)
        ready = consumer.num_pending or 0
        in_flight = consumer.num_ack_pending or 0
        delayed = max(0, (stream.state.messages or 0) - ready - in_flight)
        return QueueStats(
            queue=queue_name,
            ready=ready,
            delayed=delayed,
            in_flight=in_flight,
            redelivered=consumer.num_redelivered or 0,
            dead=await self._count_dead(queue_name),
            consumers=await self._count_subjects(self.names.presence_stream, self.names.presence_filter(queue_name)),
        )

    async def _count_dead(self, queue_name: str) -> int:
        js = await self.connection.jetstream()
        try:
            info = await js.stream_info(self.names.dead_stream, subjects_filter=self.names.dead_subject(queue_name))
        except nats.js.errors.NotFoundError:
            return 0
        return sum((info.state.subjects or {}).values())

    async def _count_subjects(self, stream: str, subjects_filter: str) -> int:
        js = await self.connection.jetstream()
        try:
            info = await js.stream_info(stream, subjects_filter=subjects_filter)
        except nats.js.errors.NotFoundError:
            return 0
        return len(info.state.subjects or {})

    async def _flush(self, queue_name: str) -> None:
        js = await self.connection.jetstream()
        try:
            await js.purge_stream(self.names.stream(queue_name))
        except nats.js.errors.NotFoundError:
            pass
        try:
            await js.purge_stream(self.names.dead_stream, subject=self.names.dead_subject(queue_name))
        except nats.js.errors.NotFoundError:
            pass


async def _add_or_update_stream(js, config: api.StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config``; its replicas only go up (:mod:`workers.replicas`)."""
    try:
        await js.add_stream(config)
        return
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
    existing = await js.stream_info(config.name)
    same_replicas = dataclasses.replace(config, num_replicas=existing.config.num_replicas)
    try:
        await js.add_stream(same_replicas)  # succeeds when nothing else differs: no update needed
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise
        await js.update_stream(same_replicas)
    await raise_replicas(js, config.name, config.num_replicas or 1)


def _pub_ack(reply) -> dict:
    """The PubAck in ``reply``; raises what nats-py's ``js.publish`` would."""
    if (reply.headers or {}).get("Status") == "503" or not reply.data:
        raise nats.errors.NoRespondersError  # no stream leader answered (failover)
    answer = json.loads(reply.data)
    if "error" in answer:
        raise nats.js.errors.APIError.from_error(answer["error"])
    return answer


def _confirmed(reply, doing: str) -> dict:
    """The PubAck in ``reply``; raises what went wrong, translated into the broker's errors."""
    try:
        return _pub_ack(reply)
    except Exception as exc:
        raise translate_error(exc, doing) from exc


def _failure_of(reply) -> Optional[BaseException]:
    """None if the publish ``reply`` answers was confirmed, else the error, translated."""
    if reply is None:
        return translate_error(TimeoutError(), "bulk enqueue")
    try:
        _confirmed(reply, "bulk enqueue")
    except Exception as exc:
        return exc
    return None


_MESSAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Message))


def _encode(message: Message) -> bytes:
    """``message.encode()`` without re-reading the dataclass fields for every message."""
    return get_encoder().encode({name: getattr(message, name) for name in _MESSAGE_FIELDS})


def _rfc3339(millis: int) -> str:
    when = dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
