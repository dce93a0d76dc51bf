"""Worker heartbeats: each worker process says, in a NATS KV bucket, that it lives, what it consumes and how busy it is.

:class:`Heartbeats` is a Dramatiq middleware. From the worker's boot it
writes the key ``<host>-<pid>`` of the bucket ``<prefix>_workers`` every
``interval`` seconds, each write with a per-message TTL (``Nats-TTL``) of
``ttl`` seconds, so a killed worker's entry goes by itself; a graceful stop
deletes it at once. It also answers the worker's probes: :meth:`liveness`
while its heartbeat loop comes round, :meth:`readiness` while every consumer
pulls. :func:`live_workers` reads the bucket for ``threeport workers``, and
:class:`ProcessGroupProbes` answers for the processes of ``threeport worker
--processes N`` from what they wrote there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import socket
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Optional, Sequence

import dramatiq
import nats.js.errors
from nats.js import api

from .connection import Connection
from .naming import Names
from .replicas import STREAM_NAME_IN_USE, raise_replicas

__all__ = ["Heartbeats", "WorkerInfo", "live_workers", "worker_id", "bucket_name", "ProcessGroupProbes"]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a worker.
INTERVAL = 5.0
#: Seconds a consumer's pull loop may go without coming round before the worker is not ready.
READY_WITHIN = 10.0


def bucket_name(prefix: str) -> str:
    """The KV bucket of a deployment's heartbeats (``InvalidName`` for a prefix NATS cannot hold)."""
    return f"{Names(prefix).prefix}_workers"


def worker_id(pid: Optional[int] = None, host: Optional[str] = None) -> str:
    """``<host>-<pid>``, the key of a worker process's heartbeat (characters a KV key allows)."""
    host = re.sub(r"[^-_a-zA-Z0-9]", "_", host or socket.gethostname())
    return f"{host}-{pid or os.getpid()}"


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process, as its last heartbeat describes it."""

    id: str
    host: str
    pid: int
    queues: list[str]
    #: Messages being processed by the worker's threads when it wrote.
    in_flight: int
    started_at: str
    heartbeat_at: str
    version: str
    #: Whether every consumer of the worker was pulling (see :meth:`Heartbeats.readiness`).
    ready: bool
    #: ``running``, or ``stopping`` once a graceful stop began.
    state: str
    #: Seconds the entry lives without a newer heartbeat.
    ttl: float

    def age(self, now: Optional[dt.datetime] = None) -> float:
        """Seconds since the heartbeat (as the clocks of the worker and this host tell)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        return max(0.0, (now - dt.datetime.fromisoformat(self.heartbeat_at)).total_seconds())

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: bytes) -> "WorkerInfo":
        fields = json.loads(data)
        return cls(**{name: fields.get(name) for name in cls.__dataclass_fields__})


class Heartbeats(dramatiq.Middleware):
    """Writes this worker process's heartbeat, deletes it on a graceful stop, and answers its probes.

    Parameters:
      interval: seconds between two heartbeats.
      ttl: seconds an entry lives without a newer one (three intervals by default, at least 1).
      ready_within: seconds a consumer's pull loop may go without coming round before :meth:`readiness` fails.
      replicas: replicas of the bucket's stream (raised to it if it has fewer); the broker's by default.
    """

    def __init__(
        self,
        *,
        interval: float = INTERVAL,
        ttl: Optional[float] = None,
        ready_within: float = READY_WITHIN,
        replicas: Optional[int] = None,
    ) -> None:
        self.interval = interval
        self.ttl = max(1, math.ceil(ttl if ttl is not None else 3 * interval))
        self.ready_within = ready_within
        self.replicas = replicas
        self.id = worker_id()
        self.started_at = _now()
        self.version = _version()
        self._connection: Optional[Connection] = None
        self._bucket = ""
        self._queues: list[str] = []
        self._consumer_threads: list = []
        self._in_flight = 0
        self._counting = threading.Lock()
        self._stopping = False
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._came_round = time.monotonic()
        self._bucket_ready = False

    # Dramatiq's hooks ----------------------------------------------------------------
    def after_worker_boot(self, broker, worker) -> None:
        self._connection = broker.connection
        self._bucket = bucket_name(broker.names.prefix)
        self.replicas = self.replicas or broker.replicas
        self._queues = sorted(worker.consumers) or sorted(broker.get_declared_queues())
        self._stopped.clear()
        self._thread = threading.Thread(target=self._loop, name="heartbeats", daemon=True)
        self._thread.start()

    def after_consumer_thread_boot(self, broker, thread) -> None:
        self._consumer_threads.append(thread)

    def before_process_message(self, broker, message) -> None:
        with self._counting:
            self._in_flight += 1

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        with self._counting:
            self._in_flight -= 1

    after_skip_message = after_process_message

    def before_worker_shutdown(self, broker, worker) -> None:
        self._stopping = True

    def after_worker_shutdown(self, broker, worker) -> None:
        self.stop()

    # The heartbeat -----------------------------------------------------------------------
    def info(self) -> WorkerInfo:
        """What the next heartbeat says."""
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self._queues),
            in_flight=self._in_flight,
            started_at=self.started_at,
            heartbeat_at=_now(),
            version=self.version,
            ready=self.readiness()[0],
            state="stopping" if self._stopping else "running",
            ttl=self.ttl,
        )

    def beat(self) -> None:
        """Write the heartbeat now."""
        payload = json.dumps(self.info().as_dict()).encode()

        async def write() -> None:
            js = await self._js()
            await js.publish(f"$KV.{self._bucket}.{self.id}", payload, timeout=self.interval, msg_ttl=self.ttl)

        self._require_connection().run(write, doing="write the heartbeat", timeout=self.interval + 1)

    def stop(self) -> None:
        """Stop the heartbeats and delete this worker's entry."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(self.interval + 2)
            self._thread = None
        if self._connection is None:
            return

        async def delete() -> None:
            js = await self._connection.jetstream()
            try:
                await js.purge_stream(_stream(self._bucket), subject=f"$KV.{self._bucket}.{self.id}")
            except nats.js.errors.NotFoundError:
                pass

        try:
            self._connection.run(delete, doing="delete the heartbeat", timeout=5)
        except Exception as exc:  # it expires by itself
            logger.warning("Could not delete this worker's heartbeat (it expires in %ss): %s", self.ttl, exc)

    def _loop(self) -> None:
        failing = False
        while True:
            self._came_round = time.monotonic()
            try:
                self.beat()
                if failing:
                    logger.info("Heartbeats are written again.")
                failing = False
            except Exception as exc:  # NATS away: keep trying, say it once
                if not failing:
                    logger.warning("Could not write this worker's heartbeat: %s", exc)
                failing = True
            if self._stopped.wait(self.interval):
                return

    async def _js(self):
        js = await self._require_connection().jetstream()
        if not self._bucket_ready:
            config = api.KeyValueConfig(
                bucket=self._bucket,
                description="threeport worker heartbeats",
                history=1,
                storage=api.StorageType.MEMORY,
                replicas=self.replicas,
                direct=True,
            )
            try:
                await js.create_key_value(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:
                    raise
                await raise_replicas(js, _stream(self._bucket), self.replicas)  # and the rest of it as it is
            self._bucket_ready = True
        return js

    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise RuntimeError("the worker has not booted yet")
        return self._connection

    # Probes --------------------------------------------------------------------------------
    def liveness(self) -> tuple[bool, dict]:
        """Whether the heartbeat loop runs and came round lately (a write may fail: NATS is not the process)."""
        since = time.monotonic() - self._came_round
        alive = self._thread is not None and self._thread.is_alive() and since <= 2 * self.interval + 2
        return alive, {"worker": self.id, "heartbeat_loop_seconds_ago": round(since, 1)}

    def readiness(self) -> tuple[bool, dict]:
        """Whether this worker consumes: NATS connected, and every consumer pulled within ``ready_within`` seconds."""
        problems = []
        if self._connection is None:
            problems.append("not started")
        elif not self._connection.is_open:
            problems.append("not connected to NATS")
        if self._stopping:
            problems.append("stopping")
        for thread in list(self._consumer_threads):
            consumer = thread.consumer
            if not thread.is_alive():
                problems.append(f"{thread.queue_name}: consumer thread ended")
            elif consumer is None or not hasattr(consumer, "stalled_for"):
                problems.append(f"{thread.queue_name}: not consuming yet")
            elif consumer.stalled_for() > self.ready_within:
                stalled = consumer.stalled_for()
                since = "stopped" if math.isinf(stalled) else f"{stalled:.0f}s"
                problems.append(f"{thread.queue_name}: no pull for {since}")
        if not self._consumer_threads:
            problems.append("no consumers")
        return not problems, {"worker": self.id, "queues": list(self._queues), "problems": problems}


class ProcessGroupProbes:
    """The probes of ``threeport worker --processes N``, answered by its parent from its children's heartbeats."""

    def __init__(self, children: Sequence, *, connection: Connection, prefix: str) -> None:
        self.children = children
        self.connection = connection
        self.prefix = prefix

    def liveness(self) -> tuple[bool, dict]:
        """Whether every worker process is running."""
        dead = [child.pid for child in self.children if not child.is_alive()]
        return not dead, {"processes": [child.pid for child in self.children], "exited": dead}

    def readiness(self) -> tuple[bool, dict]:
        """Whether every worker process wrote, in its latest heartbeat, that it is ready."""
        beats = {info.id: info for info in live_workers(self.connection, self.prefix)}
        problems = []
        for child in self.children:
            info = beats.get(worker_id(child.pid))
            if info is None:
                problems.append(f"process {child.pid}: no heartbeat")
            elif not info.ready:
                problems.append(f"process {child.pid}: not ready")
        return not problems, {"processes": [child.pid for child in self.children], "problems": problems}


def live_workers(connection: Connection, prefix: str) -> list[WorkerInfo]:
    """Every worker process of the deployment whose heartbeat has not expired, by host and pid."""
    bucket = bucket_name(prefix)

    async def read() -> list[WorkerInfo]:
        js = await connection.jetstream()
        try:
            kv = await js.key_value(bucket)
            # The keys from the stream's subjects, not a watcher: a watcher counts the entries
            # first and waits for that many, which never come when one expires meanwhile.
            info = await js.stream_info(_stream(bucket), subjects_filter=f"$KV.{bucket}.>")
        except nats.js.errors.NotFoundError:
            return []
        found = []
        for subject in info.state.subjects or {}:
            key = subject[len(f"$KV.{bucket}.") :]
            try:
                entry = await kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue  # expired or deleted since
            try:
                found.append(WorkerInfo.from_json(entry.value or b""))
            except (ValueError, TypeError):
                logger.warning("Ignoring an unreadable heartbeat under %r.", key)
        return found

    workers = connection.run(read, doing="read worker heartbeats", timeout=connection.connect_timeout + 10)
    return sorted(workers, key=lambda w: (w.host, w.pid))


def _stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _version() -> str:
    try:
        return metadata.version("threeport")
    except metadata.PackageNotFoundError:
        return "unknown"
