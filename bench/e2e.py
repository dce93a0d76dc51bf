"""End to end: objects created over HTTP per second and create→reconciled latency (issue 3).

For each worker-process count (``--workers``, default ``1,2``) it starts the
whole control plane with ``python -m cli.main up`` as a subprocess, on free
ports with a fresh ``THREEPORT_HOME`` (``THREEPORT_WORKER_PROCESSES=N``,
``THREEPORT_WORKER_THREADS=--worker-threads``, default 8) that also holds the
client config ``up`` registers itself in (``THREEPORT_CONFIG``: the user's own
is left alone). It waits for "API listening" and one "worker ready" per worker
process (a pass measures the running control plane, not its start) and reads
the token from ``$THREEPORT_HOME/config.json``. Then:

* **create**: ``--clients`` threads (default 16), each with its own keep-alive
  connection (a bare-socket HTTP/1.1 client, see :class:`Client`), POST N objects (``--objects``, default 2,000)
  with distinct names, as fast as they are answered or, with ``--rate R``, at R
  objects/s in all (object i is sent at start + i/R). ``--kind noop`` (the
  default) posts ``DomainNameDefinition`` objects, a kind whose reconcile has nothing
  to build (the issue's "no-op reconcile": lock, load, status write, event,
  unlock, ack); ``--kind workload`` posts ``WorkloadDefinition`` objects with a
  one-document YAML (parsed, and one resource row recorded).
* **reconciled**: meanwhile one poller thread asks every ``--poll-ms``
  (default 200 ms) for one object not reconciled yet
  (``?observed_generation=0&limit=1``), only to know when none is left; then one
  scan reads every object.

Latency is measured by the control plane's own clocks: an object's
``updated_at`` (written with its Reconciled status, the last write it gets)
minus its ``created_at`` (set in the API's create transaction), exact to the
microsecond and independent of the poller. Times are all taken on this one
machine.

Printed per worker count: create rate (objects/s from the first POST sent to
the last answered), sustained reconcile rate (objects reconciled ÷ time from
the first ``created_at`` to the last ``updated_at``), latency p50/p90/p99/max,
errors (any answer but 201, or a failed request), the share of the CPUs busy
and stolen by the hypervisor during the pass, and the machine's speed just
before and after it (``--speed-seconds`` of busy loop, see
:mod:`bench.machine_speed`; a cloud machine's speed drifts, and the same work
then costs more CPU); then the goals: ≥ 300
reconciles/s sustained and p50 create→reconciled ≤ 50 ms. A pass paced with
``--rate`` below what the system sustains shows its latency unloaded; an
unpaced pass shows its throughput (and a latency that is mostly queueing).

Run::

    .venv/bin/python bench/e2e.py
    .venv/bin/python bench/e2e.py --objects 5000 --workers 1,2,4
    .venv/bin/python bench/e2e.py --rate 300 --objects 6000     # paced: latency at the goal's rate
    .venv/bin/python bench/e2e.py --kind workload               # WorkloadDefinitions instead
    .venv/bin/python bench/e2e.py --json > e2e.json      # tables go to stderr

It is a benchmark, not a test: it exits 0 whatever the figures (1 when the
control plane cannot be started). ``up`` is stopped with SIGTERM after each
pass; the script then checks that nothing listens on its ports any more and that
no process it started is left (killing and reporting any that are), and deletes
the temporary home.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine_speed import loop_rate  # noqa: E402
from bench.processes import become_subreaper, proc_table, reap_zombies  # noqa: E402
from cli.local_servers import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
YAML = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
#: --kind: (what the report calls it, collection path, the body of object ``name``).
KINDS = {
    "noop": (
        "DomainNameDefinitions (no-op reconcile)",
        "/v0/domain-name-definitions",
        lambda name: {"name": name, "domain": f"{name}.example.com", "admin_email": "ops@example.com"},
    ),
    "workload": (
        "WorkloadDefinitions (one YAML document)",
        "/v0/workload-definitions",
        lambda name: {"name": name, "yaml_document": YAML.format(name=name)},
    ),
}
GOAL_RATE = 300.0  # reconciles/s sustained
GOAL_P50_MS = 50.0  # create→reconciled


def say(text: str = "") -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


# Processes ------------------------------------------------------------------------------------


def _descendants(root: int) -> set[int]:
    table = proc_table()
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, state, ppid, _ in table if ppid in frontier and state != "Z"}
        children -= found
        found |= children
        frontier = children
    return found


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class System:
    """`python -m cli.main up` on free ports with a fresh home."""

    def __init__(self, processes: int, threads: int) -> None:
        self.processes, self.threads = processes, threads
        self.home = Path(tempfile.mkdtemp(prefix="threeport-e2e-"))
        self.home.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
        self.ports = {"nats": free_port(), "postgres": free_port(), "api": free_port()}
        self.proc: Optional[subprocess.Popen] = None
        self.output: list[str] = []
        self.api_url = self.token = ""

    def start(self, timeout: float = 120.0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "THREEPORT_API_TOKEN")}
        env.update(
            THREEPORT_CONFIG=str(self.home / "client-config.yaml"),  # leave the user's own client config alone
            THREEPORT_HOME=str(self.home),
            THREEPORT_NATS_PORT=str(self.ports["nats"]),
            THREEPORT_POSTGRES_PORT=str(self.ports["postgres"]),
            THREEPORT_API_PORT=str(self.ports["api"]),
            THREEPORT_WORKER_PROCESSES=str(self.processes),
            THREEPORT_WORKER_THREADS=str(self.threads),
            COLUMNS="200",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: Ctrl-C here does not reach it; we stop it
        )
        ready = threading.Event()
        waiting = {"api": 1, "workers": self.processes}

        def drain() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip("\n"))
                if "API listening on" in line:
                    waiting["api"] -= 1
                elif line.startswith("worker ready"):
                    waiting["workers"] -= 1
                if not any(waiting.values()):
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True, name="up-output").start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("threeport up did not come up:\n" + "\n".join(self.output[-30:]))
        config = json.loads((self.home / "config.json").read_text())
        self.api_url, self.token = config["api_url"], config["token"]

    def stop(self, timeout: float = 90.0) -> dict[str, Any]:
        """SIGTERM `up`, wait, then check ports and processes; kill and report whatever is left."""
        out: dict[str, Any] = {"exit_code": None, "killed": [], "ports_still_listening": []}
        if self.proc is None:
            shutil.rmtree(self.home, ignore_errors=True)
            return out
        pgid = self.proc.pid
        tree = _descendants(self.proc.pid)
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"  threeport up did not stop within {timeout:.0f}s; killing its process group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.proc.wait()
        out["exit_code"] = self.proc.returncode
        out["stop_seconds"] = round(time.monotonic() - started, 2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reap_zombies()
            left = self._left(pgid, tree)
            busy = [name for name, port in self.ports.items() if listening(port)]
            if not left and not busy:
                break
            time.sleep(0.2)
        left = self._left(pgid, tree)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            out["killed"].append(pid)
        if left:
            time.sleep(0.5)
            reap_zombies()
        out["ports_still_listening"] = [f"{name}:{port}" for name, port in self.ports.items() if listening(port)]
        shutil.rmtree(self.home, ignore_errors=True)
        return out

    @staticmethod
    def _left(pgid: int, tree: set[int]) -> list[int]:
        """Live processes that came from `up`: its group, its former descendants, orphans adopted by us."""
        me = os.getpid()
        return sorted(
            pid
            for pid, state, ppid, pgrp in proc_table()
            if state != "Z" and pid != me and (pgrp == pgid or pid in tree or ppid == me)
        )


# Load -----------------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection on a bare socket; reconnects once when the server closed it.

    ``http.client`` spends about half a millisecond of CPU per request
    (mostly parsing headers with the ``email`` package), as much as NATS
    spends on the object; this client sends prebuilt bytes and reads only
    the status line, ``Content-Length`` (or a chunked body) and
    ``Connection: close``, so that the load generator takes less of the
    CPU the control plane is measured on.
    """

    def __init__(self, api_url: str, token: str) -> None:
        host, port = api_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.head = f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        self.sock: Optional[socket.socket] = None
        self.buffer = b""

    def request(self, method: str, path: str, body: Optional[bytes] = None) -> tuple[int, bytes]:
        body = body or b""
        data = f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        for attempt in (1, 2):
            fresh = self.sock is None
            try:
                if self.sock is None:
                    self.sock = socket.create_connection((self.host, self.port), timeout=30)
                    self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.buffer = b""
                self.sock.sendall(data)
                return self._response()
            except (ConnectionError, EOFError):  # closed between requests (keep-alive timeout): once more
                self.close()
                if attempt == 2 or fresh:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _response(self) -> tuple[int, bytes]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
        if "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            raise ConnectionError(f"answer {status} has neither Content-Length nor a chunked body")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    def _fill(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _chunked(self) -> bytes:
        parts = []
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                self._fill()
            size = int(self.buffer[:end].split(b";")[0], 16)
            self.buffer = self.buffer[end + 2 :]
            parts.append(self._take(size))
            self._take(2)  # the CRLF after the chunk (and after the last, empty one: no trailers are sent)
            if size == 0:
                return b"".join(parts)


def cpu_times() -> list[int]:
    """The machine's CPU time so far, in jiffies: user, nice, system, idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:9]]


def cpu_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """Of the CPU time between two :func:`cpu_times`: the share busy (ours and anyone's) and stolen by the hypervisor."""
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent) or 1
    user, nice, system, idle, iowait, irq, softirq, steal = spent
    return {"busy": (user + nice + system + irq + softirq) / total, "steal": steal / total}


def _timestamp(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def measure(system: System, args: argparse.Namespace) -> dict[str, Any]:
    n, path = args.objects, KINDS[args.kind][1]
    body_of = KINDS[args.kind][2]
    prefix = "e2e-" + uuid.uuid4().hex[:6]
    names = [f"{prefix}-{i:06d}" for i in range(n)]
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    created: set[str] = set()
    errors: dict[str, int] = {}
    lock = threading.Lock()
    counter = itertools.count()
    posting_done = threading.Event()
    stop_polling = threading.Event()
    late = [0.0]  # the most a paced POST went out behind its schedule (s)

    def post_loop(start: float) -> None:
        client = Client(system.api_url, system.token)
        try:
            while (i := next(counter)) < n:
                name = names[i]
                body = json.dumps(body_of(name)).encode()
                if args.rate:
                    due = start + i / args.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        late[0] = max(late[0], -delay)
                sent[name] = time.monotonic()
                try:
                    status, _ = client.request("POST", path, body)
                except Exception as exc:  # a failed request is an error, not the end of the run
                    key = type(exc).__name__
                else:
                    key = None if status == 201 else str(status)
                answered[name] = time.monotonic()
                with lock:
                    if key is None:
                        created.add(name)
                    else:
                        errors[key] = errors.get(key, 0) + 1
        finally:
            client.close()

    def scan(client: Client) -> list[dict[str, Any]]:
        """Every object of the kind, page by page."""
        items: list[dict[str, Any]] = []
        after: Optional[str] = None
        while True:
            status, raw = client.request("GET", f"{path}?limit=1000" + (f"&after={after}" if after else ""))
            if status != 200:
                raise RuntimeError(f"listing {path} answered {status}: {raw[:200]!r}")
            page = json.loads(raw)
            items.extend(page["items"])
            after = page["next"]
            if not after:
                return items

    def poll_loop() -> None:
        """Until every object is reconciled: ask for one whose generation 1 is not observed yet."""
        client = Client(system.api_url, system.token)
        try:
            while not stop_polling.wait(args.poll_ms / 1000):
                with contextlib.suppress(Exception):
                    status, raw = client.request("GET", f"{path}?observed_generation=0&limit=1")
                    if posting_done.is_set() and status == 200 and not json.loads(raw)["items"]:
                        return
        finally:
            client.close()

    poller = threading.Thread(target=poll_loop, name="poller", daemon=True)
    start = time.monotonic() + 0.05
    posters = [
        threading.Thread(target=post_loop, args=(start,), name=f"client-{i}", daemon=True) for i in range(args.clients)
    ]
    cpu_before = cpu_times()
    poller.start()
    for t in posters:
        t.start()
    for t in posters:
        t.join()
    posting_done.set()
    post_end = max(answered.values(), default=time.monotonic())
    first_sent = min(sent.values(), default=start)
    say(f"    {len(created):,} created in {post_end - first_sent:.2f}s; waiting for reconciles")
    poller.join(args.settle)
    stop_polling.set()
    poller.join(10)
    cpu = cpu_shares(cpu_before, cpu_times())

    client = Client(system.api_url, system.token)
    try:
        everything = scan(client)  # the whole list once, with every object's timestamps
    finally:
        client.close()
    mine = [item for item in everything if item["name"] in created]
    reconciled = [item for item in mine if (item.get("observed_generation") or 0) >= 1]
    latencies = [(_timestamp(o["updated_at"]) - _timestamp(o["created_at"])) * 1000 for o in reconciled]
    first_created = min((_timestamp(o["created_at"]) for o in mine), default=None)
    last_reconciled = max((_timestamp(o["updated_at"]) for o in reconciled), default=None)
    reconcile_seconds = (last_reconciled - first_created) if reconciled else None
    post_seconds = post_end - first_sent
    ms = lambda q: percentile(latencies, q)  # noqa: E731
    return {
        "objects": n,
        "created": len(created),
        "errors": errors,
        "error_count": sum(errors.values()),
        "reconciled": len(reconciled),
        "unreconciled": len(created) - len(reconciled),
        "post_seconds": post_seconds,
        "create_rate": len(created) / post_seconds if post_seconds > 0 else None,
        "paced_late_ms": late[0] * 1000 if args.rate else None,
        "reconcile_seconds": reconcile_seconds,
        "reconcile_rate": len(reconciled) / reconcile_seconds if reconcile_seconds else None,
        "latency_ms": {"p50": ms(50), "p90": ms(90), "p99": ms(99), "max": max(latencies, default=None)},
        "cpu": cpu,
    }


# Report -----------------------------------------------------------------------------------------


def _f(value: Any, fmt: str = ",.0f") -> str:
    return "—" if not isinstance(value, (int, float)) else format(value, fmt)


def render(report: dict[str, Any]) -> str:
    lines = [
        "",
        f"== threeport end to end: {report['objects']:,} {KINDS[report['kind']][0]} over HTTP, "
        f"{report['clients']} client threads, "
        + (f"paced at {report['rate']:,.0f}/s, " if report["rate"] else "unpaced, ")
        + f"{report['worker_threads']} threads per worker process | {report['machine']['cpus']} CPUs ==",
        f"{'worker processes':<18}{'create/s':>10}{'reconcile/s':>13}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'errors':>8}{'unrec.':>8}{'CPU busy':>10}{'steal':>7}{'speed':>10}",
    ]
    for procs, data in report["runs"].items():
        if "error" in data:
            lines.append(f"{procs:<18}failed: {data['error'].splitlines()[0]}")
            continue
        lat = data["latency_ms"]
        lines.append(
            f"{procs:<18}{_f(data['create_rate']):>10}{_f(data['reconcile_rate']):>13}{_f(lat['p50']):>9}"
            f"{_f(lat['p90']):>9}{_f(lat['p99']):>9}{_f(lat['max']):>9}{data['error_count']:>8}"
            f"{data['unreconciled']:>8}{data['cpu']['busy']:>10.0%}{data['cpu']['steal']:>7.0%}"
            f"{_f(data['speed_before'], '.0f') + ' / ' + _f(data['speed_after'], '.0f'):>10}"
        )
    lines.append("")
    for procs, data in report["runs"].items():
        if "error" in data:
            continue
        g = data["goals"]
        lines.append(
            f"  {procs} worker process(es): sustained reconciles/s {_f(data['reconcile_rate']):>6}   goal ≥ "
            f"{GOAL_RATE:.0f}   {'met' if g['rate_met'] else 'NOT met'}"
        )
        lines.append(
            f"  {procs} worker process(es): p50 create→reconciled  {_f(data['latency_ms']['p50']):>6} ms goal ≤ "
            f"{GOAL_P50_MS:.0f} ms {'met' if g['p50_met'] else 'NOT met'}"
        )
    lines.append("")
    for procs, data in report["runs"].items():
        if "error" in data:
            continue
        stop = data["stop"]
        late = (
            f", paced POSTs at most {data['paced_late_ms']:,.0f} ms late" if data["paced_late_ms"] is not None else ""
        )
        lines.append(
            f"  {procs}: POST phase {data['post_seconds']:.2f}s{late}, first created → last reconciled "
            f"{_f(data['reconcile_seconds'], '.2f')}s; errors {data['errors'] or 'none'}; "
            f"stop: exit {stop['exit_code']} in {_f(stop.get('stop_seconds'), '.1f')}s, "
            f"left over: {stop['killed'] or 'none'}, ports still listening: {stop['ports_still_listening'] or 'none'}"
        )
    lines.append("")
    lines.extend(f"note: {note}" for note in report["notes"])
    return "\n".join(lines)


# Main -------------------------------------------------------------------------------------------


def run_pass(procs: int, args: argparse.Namespace) -> dict[str, Any]:
    say(f"\n[{procs} worker process(es)] starting threeport up ...")
    data: dict[str, Any] = {"load_before": os.getloadavg()}
    system = System(procs, args.worker_threads)
    try:
        t0 = time.monotonic()
        system.start()
        data["startup_seconds"] = round(time.monotonic() - t0, 2)
        data["speed_before"] = _speed(args)
        say(
            f"    up in {data['startup_seconds']:.1f}s at {system.api_url}; machine speed {_f(data['speed_before'], '.1f')}"
            f"; posting {args.objects:,} objects"
        )
        data.update(measure(system, args))
        data["speed_after"] = _speed(args)
    except Exception as exc:
        data["error"] = f"{type(exc).__name__}: {exc}"
        say(f"    failed: {data['error']}")
    finally:
        say("    stopping (SIGTERM) ...")
        data["stop"] = system.stop()
        say(
            f"    stopped: exit {data['stop']['exit_code']}, left over {data['stop']['killed'] or 'none'}, "
            f"ports still listening {data['stop']['ports_still_listening'] or 'none'}"
        )
    data["load_after"] = os.getloadavg()
    if "error" not in data:
        data["goals"] = {
            "rate_met": bool(
                data["reconcile_rate"] and data["reconcile_rate"] >= GOAL_RATE and not data["unreconciled"]
            ),
            "p50_met": bool(data["latency_ms"]["p50"] is not None and data["latency_ms"]["p50"] <= GOAL_P50_MS),
        }
    return data


def _speed(args: argparse.Namespace) -> Optional[float]:
    """The machine's speed now (:mod:`bench.machine_speed`), with the control plane started and idle."""
    return loop_rate(args.speed_seconds) if args.speed_seconds > 0 else None


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", "-n", type=int, default=2_000, help="objects created per pass (default 2000)")
    parser.add_argument("--workers", default="1,2", help="worker-process counts, comma-separated (default 1,2)")
    parser.add_argument("--worker-threads", type=int, default=8, help="threads per worker process (default 8)")
    parser.add_argument("--clients", type=int, default=16, help="client threads posting (default 16)")
    parser.add_argument(
        "--kind", choices=sorted(KINDS), default="noop", help="noop: DomainNameDefinitions (default); workload"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="objects/s to post in all (default 0: as fast as answered)"
    )
    parser.add_argument(
        "--poll-ms", type=float, default=200.0, help="how often the list is read for progress (default 200)"
    )
    parser.add_argument(
        "--settle", type=float, default=60.0, help="seconds to wait for reconciles after the last POST (default 60)"
    )
    parser.add_argument(
        "--speed-seconds",
        type=float,
        default=2.0,
        help="seconds of busy loop before and after each pass to read the machine's speed (default 2; 0: none)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON on stdout (tables go to stderr)")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers must be comma-separated numbers")
    if args.objects < 1 or args.clients < 1 or args.worker_threads < 1 or not args.worker_counts:
        parser.error("--objects, --clients, --worker-threads and --workers must be positive")
    if any(w < 1 for w in args.worker_counts) or args.poll_ms <= 0 or args.rate < 0 or args.speed_seconds < 0:
        parser.error("--workers and --poll-ms must be positive, --rate and --speed-seconds not negative")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)

    def terminate(signum, frame):  # stop `up` on SIGTERM as on Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    become_subreaper()
    report: dict[str, Any] = {
        "objects": args.objects,
        "clients": args.clients,
        "worker_threads": args.worker_threads,
        "kind": args.kind,
        "rate": args.rate,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": {},
        "notes": [
            "latency = an object's updated_at (its Reconciled status write) − its created_at (the API's insert), "
            "both written by the control plane",
            "reconcile/s = objects reconciled ÷ (last updated_at − first created_at); create/s = objects "
            "created ÷ (last POST answered − first POST sent)",
            "the client, the poller, the API, PostgreSQL, NATS and the workers all share this machine's CPUs; "
            "single runs, so expect noise",
            "CPU busy / steal = shares of all CPUs' time from the first POST to the end of the wait for reconciles, "
            "busy (anyone's work) and stolen by the hypervisor (time this machine did not get)",
            "speed = millions of iterations per second per CPU of a pure-Python busy loop on every CPU, just "
            "before the pass and just after it (bench/machine_speed.py): how fast the machine ran then; the same "
            "work costs more CPU when it is lower",
        ],
    }
    say(f"threeport e2e benchmark: {args.objects:,} objects, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}")
    failed = False
    try:
        for procs in args.worker_counts:
            report["runs"][procs] = run_pass(procs, args)
            failed = failed or "error" in report["runs"][procs]
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    text = render(report)
    if args.json:
        say(text)
        print(json.dumps(report, indent=2, default=str))
    else:
        print(text, flush=True)
    return 1 if failed and all("error" in r for r in report["runs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
